"""AWS stand-in for the tests: moto in server mode on 127.0.0.1 (EC2, EBS direct, S3, STS are
native there), reached by the real boto3 clients through the SDK's standard endpoint settings
(``AWS_ENDPOINT_URL``), with fake credentials. Nothing inside boto3 is replaced."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
SECRET_MARKER = "SECRET-MARKER-4f9c2e1d"  # AWS_SECRET_ACCESS_KEY in tests: must never be printed


@dataclass(frozen=True)
class Moto:
    url: str

    def env(self) -> dict[str, str]:
        """What a user of a local stand-in sets: the SDK's own endpoint and credential variables."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "AKIDPROVISIONTEST",
            "AWS_SECRET_ACCESS_KEY": SECRET_MARKER,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def reset(self) -> None:
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Moto]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield Moto(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def aws(moto_server: Moto, monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    """A clean moto, and this process's environment pointing boto3 at it."""
    moto_server.reset()
    for key, value in moto_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    yield moto_server
