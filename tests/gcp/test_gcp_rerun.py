"""A rerun of `provision push gcp` (the image is there: reuse) does not import google-cloud-compute;
its images.list, sent without the SDK, is the SDK's request on the wire, pages, is retried as
provision/retry.py says, and fails with the SDK's error classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from gcp.gce_fake import FakeGce
from gcp.gcp_testkit import BUCKET, PROJECT, Gcs, write_artifact
from google.auth.credentials import AnonymousCredentials

from provision.clock import FakeClock
from provision.providers.gcp.clients import GceClients
from provision.providers.gcp.image_list import list_images
from provision.reconcile.provider import ProviderError, RateLimitedError, TransientProviderError
from provision.retry import RetryPolicy


def _imports(stderr: str) -> set[str]:
    """The modules ``python -X importtime`` reported importing."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


def _push(gce: FakeGce, gcs: Gcs, manifest: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STORAGE_EMULATOR_HOST": gcs.url,
        "XDG_CACHE_HOME": str(manifest.parent / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "provision", "push", "gcp", str(manifest)]
        + ["--project", PROJECT, "--bucket", BUCKET, "--endpoint", gce.url, "--anonymous"]
        + ["--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_rerun_of_the_command_does_not_import_the_compute_sdk(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    artifact = write_artifact(tmp_path / "web")
    first = _push(gce, gcs, artifact.manifest)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["reused"] is False
    assert "google.cloud.compute_v1" in _imports(first.stderr)  # inserting needs it
    again = _push(gce, gcs, artifact.manifest)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout) == {**json.loads(first.stdout), "reused": True}
    loaded = _imports(again.stderr)
    assert "provision.providers.gcp.image_list" in loaded  # the lookup ran in this process
    heavy = sorted(
        m
        for m in loaded
        if m.startswith(("google.cloud.compute", "boto3", "botocore", "azure", "yaml"))
    )
    assert heavy == []
    assert gce.count("images.insert") == 1 and gce.count("images.list") == 2


@contextmanager
def _recording(
    pages: list[dict[str, Any]],
) -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """A server answering GET with ``pages`` in turn (each page's nextPageToken chains them);
    every request's path (with its query) and headers recorded."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            data = json.dumps(pages[(len(seen) - 1) % len(pages)]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_images_list_is_the_sdks_request_on_the_wire() -> None:
    from google.cloud import compute_v1

    pages: list[dict[str, Any]] = [
        {"items": [{"name": "a", "status": "READY"}], "nextPageToken": "t/1 2"},
        {"items": [{"name": "b", "deprecated": {"state": "DEPRECATED"}}]},
    ]
    wanted = 'labels.provision-digest = "0123abcd" AND family = "web"'
    with _recording(pages) as (url, seen):
        clients = GceClients(url, AnonymousCredentials())  # type: ignore[no-untyped-call]
        request = compute_v1.ListImagesRequest(project="my-project", filter=wanted)
        by_sdk = [i.name for i in clients.images.list(request=request, retry=None, timeout=10)]
        sdk_requests = list(seen)
        seen.clear()
        ours = list_images(clients, "my-project", wanted, 10)
    assert by_sdk == [i.name for i in ours] == ["a", "b"]
    assert ours[1].deprecated == "DEPRECATED" and ours[0].status == "READY"
    assert [p for p, _ in seen] == [p for p, _ in sdk_requests]  # paths, queries, pages
    assert len(seen) == 2 and "pageToken=t%2F1+2" in seen[1][0]
    for (_, mine), (_, theirs) in zip(seen, sdk_requests, strict=True):
        for header in ("x-goog-request-params", "x-goog-api-version", "content-type"):
            assert mine.get(header) == theirs.get(header), header
        assert mine["x-goog-api-client"].split()[0] == theirs["x-goog-api-client"].split()[0]


def _clients(gce: FakeGce, clock: FakeClock, attempts: int = 3) -> GceClients:
    policy = RetryPolicy(attempts=attempts, total=60.0, clock=clock)
    return GceClients(gce.url, AnonymousCredentials(), policy)  # type: ignore[no-untyped-call]


def test_a_rate_limited_or_failing_images_list_is_retried_by_the_policy(gce: FakeGce) -> None:
    clock = FakeClock()
    gce.inject("images.list", "429", "503")
    assert list_images(_clients(gce, clock), PROJECT, "", 10) == []
    assert gce.count("images.list") == 3
    assert clock.sleeps[0] == 0.0  # the 429's Retry-After: 0, waited exactly
    gce.inject("images.list", "429", "429", "429")
    with pytest.raises(RateLimitedError, match="images.list: rate limited"):
        list_images(_clients(gce, clock), PROJECT, "", 10)


def test_a_refused_images_list_is_a_permanent_error_with_gcps_message(gce: FakeGce) -> None:
    gce.inject("images.list", "403")
    with pytest.raises(ProviderError) as raised:
        list_images(_clients(gce, FakeClock()), PROJECT, "", 10)
    assert not isinstance(raised.value, TransientProviderError)
    assert "HTTP 403 Forbidden" in raised.value.message
    assert raised.value.hint is not None and "permission" in raised.value.hint
    assert gce.count("images.list") == 1  # not retried
    with pytest.raises(ProviderError, match="HTTP 400 BadRequest"):
        list_images(_clients(gce, FakeClock()), PROJECT, "labels.x ~ nope", 10)
