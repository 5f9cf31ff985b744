"""``provision push azure`` as a user runs it: a build's manifest and VHD, the SDKs' own
environment variables pointing at Azurite and the fake ARM server, JSON out; a second run
reuses; neither the bearer token nor the storage key appears in any output, even with -vv."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from arm_testkit import GROUP, LOCATION, SUBSCRIPTION, Arm
from azurite_testkit import KEY, Azurite
from cli_testkit import run_provision
from vhd_testkit import write_vhd

ROOT = Path(__file__).resolve().parents[2]
MARKER = "SECRET-MARKER-azure-cli-51c0"
HEX = "9a" * 32


def _build(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    write_vhd(out / "web.vhd", 16, [0, 5])
    manifest = {
        "name": "web",
        "image_digest": "sha256:" + HEX,
        "outputs": [{"format": "vhd", "file": "web.vhd"}],
    }
    (out / "web.manifest.json").write_text(json.dumps(manifest))
    return out


def _provision(arm: Arm, azurite: Azurite, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PYTHONPATH": str(ROOT),
        "PROVISION_AZURE_TOKEN": MARKER,
        "PROVISION_AZURE_ARM_ENDPOINT": arm.url,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
    }
    return run_provision(*args, cwd=ROOT, env=env, timeout=120)


def test_push_azure_prints_the_image_and_reuses_it_without_leaking_secrets(
    arm: Arm, azurite: Azurite, tmp_path: Path
) -> None:
    arm.fake.token = MARKER
    azurite.new_container("cli")
    out = _build(tmp_path)
    common = [
        "push",
        "azure",
        str(out),
        "--resource-group",
        GROUP,
        "--storage-account",
        "devstoreaccount1",
        "--container",
        "cli",
        "--location",
        LOCATION,
        "--gallery",
        "g",
        "--gallery-image",
        "web",
        "--version",
        "1.2.3",
        "--replicas",
        "eastus=2",
        "--json",
    ]
    first = _provision(arm, azurite, "-vv", *common)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["image_id"].endswith("/galleries/g/images/web/versions/1.2.3")
    assert result["blob_url"].endswith(f"/cli/provision-{HEX}.vhd")
    assert result["reused"] is False and result["replicas"] == {"eastus": 2, LOCATION: 1}
    assert (
        result["region"] == LOCATION
        and result["digest"] == "sha256:" + HEX
        and result["name"] == "1.2.3"
    )
    assert "uploading provision-" in first.stderr
    version = arm.fake.get(result["image_id"])
    assert version is not None and version["tags"]["provision-digest"] == HEX

    again = _provision(arm, azurite, "-vv", *common)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["reused"] is True
    for run in (first, again):
        for text in (run.stdout, run.stderr):
            assert MARKER not in text and KEY not in text
    assert "Authorization" in first.stderr  # -vv logged the HTTP headers, redacted


def test_push_azure_refuses_bad_input_in_one_line(
    arm: Arm, azurite: Azurite, tmp_path: Path
) -> None:
    arm.fake.token = MARKER
    out = _build(tmp_path)
    base = [
        "push",
        "azure",
        "--resource-group",
        GROUP,
        "--storage-account",
        "a",
        "--container",
        "c",
        "--location",
        LOCATION,
    ]
    missing = _provision(arm, azurite, *base, str(tmp_path / "nothing"))
    assert (
        missing.returncode == 2
        and "no such file" in missing.stderr
        and "Traceback" not in missing.stderr
    )
    trusted = _provision(arm, azurite, *base, str(out), "--security-type", "TrustedLaunch")
    assert trusted.returncode == 2 and "cannot boot managed images" in trusted.stderr
    replicas = _provision(arm, azurite, *base, str(out), "--gallery", "g", "--replicas", "eastus")
    assert replicas.returncode == 2 and "REGION=N" in replicas.stderr
    aws_only = _provision(arm, azurite, *base, str(out), "--share-with", "123456789012")
    assert (
        aws_only.returncode == 2 and "unrecognized arguments: --share-with" in aws_only.stderr
    )  # provision push azure has no AWS flags
    assert arm.fake.requests == []  # every refusal came before any call
    (out / "web.vhd").write_bytes(b"\0" * 4096)
    broken = _provision(arm, azurite, *base, str(out))
    assert (
        broken.returncode == 1
        and "not a fixed VHD" in broken.stderr
        and "Traceback" not in broken.stderr
    )
    assert [m for m, _ in arm.fake.requests] == [
        "GET"
    ]  # only the look for the digest: nothing made
