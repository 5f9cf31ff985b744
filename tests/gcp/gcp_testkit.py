"""GCP stand-ins for the tests: gcp-storage-emulator in its own process on 127.0.0.1 (reached by
the real google-cloud-storage client through the SDK's own ``STORAGE_EMULATOR_HOST``), and the
wire-level Compute Engine fake of :mod:`gcp.gce_fake` (reached by the real google-cloud-compute
client through ``client_options.api_endpoint``). Nothing inside either SDK is replaced."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from gcp.gce_fake import FakeGce, serve_fake_gce
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from provision.providers.gcp.clients import GceClients, gce_clients
from provision.target import Artifact

PROJECT = "provision-test"
BUCKET = "provision-images"
ZONE = "us-central1-a"
SECRET_MARKER = "ya29.SECRET-MARKER-7d41c0e2"  # an access token in tests: must never be printed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Gcs:
    url: str

    def client(self) -> storage.Client:
        return storage.Client(project=PROJECT, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]

    def wipe(self) -> None:
        requests.get(f"{self.url}/wipe", timeout=10).raise_for_status()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[Gcs]:
    port = _free_port()
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    process = subprocess.Popen(
        [str(exe), "start", "-H", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/storage/v1/b", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(
                        f"gcp-storage-emulator did not start (pip install gcp-storage-emulator; exit {process.poll()})"
                    )
                time.sleep(0.1)
        yield Gcs(url)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def gcs(gcs_emulator: Gcs, monkeypatch: pytest.MonkeyPatch) -> Gcs:
    """A clean emulator with the bucket, and this process's environment pointing the SDK at it."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    gcs_emulator.wipe()
    gcs_emulator.client().create_bucket(BUCKET)
    return gcs_emulator


@pytest.fixture
def gce(gcs: Gcs) -> Iterator[FakeGce]:
    with serve_fake_gce(gcs.url) as fake:
        yield fake


def clients_for(fake: FakeGce) -> GceClients:
    return gce_clients(fake.url, AnonymousCredentials())  # type: ignore[no-untyped-call]


def write_artifact(
    dest: Path,
    name: str = "web",
    *,
    payload: bytes = b"",
    size_mib: int = 3,
    platform: str = "linux/amd64",
) -> Artifact:
    """A ``gcp`` build as ``provision build`` leaves it: NAME.img.tar.gz (GNU tar, disk.raw) and
    NAME.manifest.json; the digest is the content's, so a different payload is another image."""
    import hashlib

    dest.mkdir(parents=True, exist_ok=True)
    raw = dest / "disk.raw"
    body = payload or os.urandom(size_mib * 1024 * 1024)
    raw.write_bytes(body)
    tarball = dest / f"{name}.img.tar.gz"
    with tarfile.open(tarball, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        tar.add(raw, "disk.raw")
    raw.unlink()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    manifest = dest / f"{name}.manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "name": name,
                "image_digest": digest,
                "platform": platform,
                "version": 1,
                "outputs": [
                    {
                        "file": tarball.name,
                        "format": "gcp",
                        "sha256": "",
                        "size": tarball.stat().st_size,
                    }
                ],
            }
        )
    )
    return Artifact(name, digest, "gcp", (tarball,), manifest)
