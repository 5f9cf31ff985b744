"""Health over HTTP: a provider that cannot tell health itself is probed at the agent's
endpoint, also when the engine has wrapped it to count or pace its calls."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provision.reconcile.observe import probe_instances
from provision.reconcile.provider import (
    CountingProvider,
    CreateRequest,
    HealthState,
    Instance,
    Page,
)
from provision.reconcile.spec import GroupSpec, HealthPolicy


class _Agent(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def agent_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class AddressOnlyProvider:
    """Knows where machines are, not whether they are healthy (like a cloud provider)."""

    name = "address-only"

    def __init__(self, ports: Mapping[str, int]) -> None:
        self.ports = ports

    def create_instance(self, request: CreateRequest) -> Instance:
        raise NotImplementedError

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        return Page(())

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        raise NotImplementedError

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        return ("127.0.0.1", self.ports[instance.id]) if instance.id in self.ports else None


def _instance(name: str) -> Instance:
    return Instance(id=name, name=name, tags={}, image="img", created_at=0.0)


@pytest.mark.parametrize(
    "path, expected", [("/healthz", HealthState.HEALTHY), ("/other", HealthState.UNHEALTHY)]
)
def test_wrapped_provider_is_probed_over_http(
    agent_port: int, path: str, expected: HealthState
) -> None:
    closed = _free_closed_port()
    provider = CountingProvider(AddressOnlyProvider({"up": agent_port, "down": closed}))
    group = GroupSpec(
        name="web",
        provider="p",
        image="img",
        size=3,
        health=HealthPolicy(port=7080, path=path, enabled=True),
    )
    states = probe_instances(
        provider, group, [_instance("up"), _instance("down"), _instance("nowhere")]
    )
    assert states == [expected, HealthState.UNHEALTHY, HealthState.UNKNOWN]


def _free_closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
