"""`provision push gcp` as a user runs it (a subprocess, -vv logging on), and the secret it is
given never showing in what it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gcp.gce_fake import FakeGce
from gcp.gcp_testkit import BUCKET, PROJECT, SECRET_MARKER, Gcs, write_artifact


def _run(gce: FakeGce, gcs: Gcs, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GOOGLE_OAUTH_ACCESS_TOKEN": SECRET_MARKER,
        "STORAGE_EMULATOR_HOST": gcs.url,
        "XDG_CACHE_HOME": str(Path(args[0]).parent / "cache"),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "provision",
            "-vv",
            "push",
            "gcp",
            *args,
            "--project",
            PROJECT,
            "--bucket",
            BUCKET,
            "--endpoint",
            gce.url,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_push_gcp_prints_json_then_reuses(tmp_path: Path, gcs: Gcs, gce: FakeGce) -> None:
    artifact = write_artifact(tmp_path / "web")
    first = _run(gce, gcs, str(artifact.manifest), "--family", "web", "--json")
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)
    assert made["image"].startswith("web-") and made["family"] == "web" and made["reused"] is False
    again = _run(
        gce, gcs, str(artifact.manifest.parent), "--json"
    )  # the build directory names it too
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {**made, "reused": True}
    assert gce.count("images.insert") == 1


def test_the_access_token_is_used_and_never_printed(tmp_path: Path, gcs: Gcs, gce: FakeGce) -> None:
    artifact = write_artifact(tmp_path / "web")
    done = _run(gce, gcs, str(artifact.manifest))
    assert done.returncode == 0, done.stderr
    assert any(
        {k.lower(): v for k, v in h.items()}.get("authorization") == f"Bearer {SECRET_MARKER}"
        for h in gce.headers
    )  # it was the credential
    gce.inject("images.list", "403")
    refused = _run(gce, gcs, str(artifact.manifest), "--json")
    assert refused.returncode == 1 and "permission" in refused.stderr
    assert "Traceback" not in refused.stderr
    for output in (done.stdout, done.stderr, refused.stdout, refused.stderr):
        assert SECRET_MARKER not in output
        assert SECRET_MARKER.split(".", 1)[1] not in output


def test_bad_arguments_are_one_line_errors(tmp_path: Path, gcs: Gcs, gce: FakeGce) -> None:
    artifact = write_artifact(tmp_path / "web")
    missing = _run(gce, gcs, str(tmp_path / "nope.manifest.json"))
    assert (
        missing.returncode == 2
        and "no such file" in missing.stderr
        and "Traceback" not in missing.stderr
    )
    lonely = _run(gce, gcs, str(artifact.manifest), "--deprecate-previous")
    assert lonely.returncode == 2 and "--deprecate-previous needs --family" in lonely.stderr
    bad = _run(gce, gcs, str(artifact.manifest), "--guest-os-features", "NOPE")
    assert bad.returncode == 2 and "unknown guest OS feature 'NOPE'" in bad.stderr
    assert gce.count("images.insert") == 0
