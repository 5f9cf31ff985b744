"""Azurite (Microsoft's storage emulator, from npm) on 127.0.0.1 for the Azure blob tests.

It is installed once into a cache the tests own (``$PROVISION_AZURITE_DIR``, default
/var/tmp/provision-azurite; scripts/setup.sh installs it there too), pinned to the last release
that runs on Debian's Node 20, and started per session in memory, without telemetry."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

AZURITE_VERSION = "3.35.0"
ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account and key
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_dir() -> Path:
    return Path(os.environ.get("PROVISION_AZURITE_DIR", "/var/tmp/provision-azurite"))


def azurite_blob_program() -> Path:
    """``azurite-blob``, installed with npm into the cache when missing."""
    where = azurite_dir()
    program = where / "node_modules" / ".bin" / "azurite-blob"
    if program.exists():
        return program
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: apt-get install npm (Azurite comes from npm)")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(where),
            f"azurite@{AZURITE_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 or not program.exists():
        pytest.fail(f"npm install azurite@{AZURITE_VERSION} failed: {done.stderr[-2000:]}")
    return program


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Azurite:
    port: int

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.account_url};"
        )

    def service(self) -> BlobServiceClient:
        return BlobServiceClient(
            self.account_url, credential={"account_name": ACCOUNT, "account_key": KEY}
        )

    def new_container(self, name: str) -> ContainerClient:
        container = self.service().get_container_client(name)
        container.create_container()
        return container


def azurite_command(program: Path, port: int) -> list[str]:
    """``azurite-blob`` serving on 127.0.0.1:``port``, in memory, silent, without telemetry."""
    return [
        str(program),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--disableTelemetry",
        "--silent",
        "--skipApiVersionCheck",
    ]


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    program = azurite_blob_program()
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    process = subprocess.Popen(
        azurite_command(program, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=workdir,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                    pytest.fail(f"azurite-blob did not start on 127.0.0.1:{port}: {err[-2000:]}")
                time.sleep(0.2)
        yield Azurite(port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
