"""Registry settings: the registries file, the environment, and where each registry's API
lives (Docker Hub by default for docker.io; configured mirrors and endpoints first)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from oci_testkit import make_client

from provision.errors import UsageError
from provision.oci.config import load_registry_config
from provision.oci.registry import RegistryClient
from provision.reference import ImageRef


def test_registry_settings_file(tmp_path: Path) -> None:
    good = tmp_path / "registries.yml"
    good.write_text(
        "mirrors:\n  docker.io: [http://127.0.0.1:5001/]\n"
        "insecure: [lan-host:5000]\nendpoints:\n  foo.test: https://api.foo.test\n"
    )
    config = load_registry_config({"PROVISION_REGISTRIES": str(good)})
    assert config.mirrors == {"docker.io": ("http://127.0.0.1:5001",)}
    assert config.endpoints == {"foo.test": "https://api.foo.test"}
    assert config.is_insecure("lan-host:5000") and config.is_insecure("[::1]:5000")
    assert config.is_insecure("localhost:1") and not config.is_insecure("10.0.0.1:5000")
    bad = tmp_path / "bad.yml"
    bad.write_text("mirror:\n  docker.io: x\n")
    with pytest.raises(UsageError, match="unknown keys: mirror"):
        load_registry_config({"PROVISION_REGISTRIES": str(bad)})
    with pytest.raises(UsageError, match="not an http"):
        load_registry_config(
            {
                "PROVISION_REGISTRIES": str(tmp_path / "none"),
                "PROVISION_REGISTRY_MIRRORS": "docker.io=ftp://x",
            }
        )


def test_parallel_setting(tmp_path: Path) -> None:
    settings = tmp_path / "registries.yml"
    assert load_registry_config({"PROVISION_REGISTRIES": str(settings)}).parallel == 4
    settings.write_text("parallel: 9\n")
    config = load_registry_config({"PROVISION_REGISTRIES": str(settings)})
    assert config.parallel == 9
    assert RegistryClient(config=config).parallel == 9  # the client's default
    assert RegistryClient(config=config, parallel=2).parallel == 2  # the CLI's -j wins
    for bad in ("0", "-1", "two", "true", "1000"):
        settings.write_text(f"parallel: {bad}\n")
        with pytest.raises(UsageError, match=r"parallel: .* is not a whole number from 1 to 64"):
            load_registry_config({"PROVISION_REGISTRIES": str(settings)})


def test_docker_hub_is_the_default_for_docker_io() -> None:
    client = make_client()
    ref = ImageRef.parse("linuxkit/kernel:6.6.71")
    assert (ref.registry, ref.repository, ref.reference) == (
        "docker.io",
        "linuxkit/kernel",
        "6.6.71",
    )
    assert ImageRef.parse("alpine").repository == "library/alpine"
    assert client.pull_endpoints(ref.registry) == ["https://registry-1.docker.io"]
    assert client.base_url("docker.io") == "https://registry-1.docker.io"
    # other registries keep their own name as API host
    assert client.base_url("ghcr.example") == "https://ghcr.example"


def test_docker_hub_legacy_name_is_docker_io() -> None:
    ref = ImageRef.parse("index.docker.io/linuxkit/init:v1")
    assert ref.name == "docker.io/linuxkit/init:v1"
    assert ImageRef.parse("index.docker.io/alpine").name == "docker.io/library/alpine:latest"


def test_mirrors_and_endpoints_come_before_docker_hub(tmp_path: Path) -> None:
    mirrored = make_client(mirrors={"docker.io": ("http://127.0.0.1:5001",)})
    assert mirrored.pull_endpoints("docker.io") == [
        "http://127.0.0.1:5001",
        "https://registry-1.docker.io",
    ]
    settings = tmp_path / "registries.yml"
    settings.write_text(
        "mirrors:\n  docker.io: [https://mirror.lan]\nendpoints:\n  docker.io: https://hub.lan\n"
    )
    config = load_registry_config({"PROVISION_REGISTRIES": str(settings)})
    assert config.endpoint("docker.io") == "https://hub.lan"
    client = make_client(mirrors=config.mirrors, endpoints=config.endpoints)
    assert client.pull_endpoints("docker.io") == ["https://mirror.lan", "https://hub.lan"]


def test_insecure_registry_speaking_tls_keeps_https(tmp_path: Path) -> None:
    """A loopback (or insecure) registry gets https when it completes a TLS handshake, plain
    http when it does not, as Docker chooses."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    plain = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        tls_host = f"127.0.0.1:{server.server_address[1]}"
        plain_host = f"127.0.0.1:{plain.server_address[1]}"
        assert make_client().base_url(tls_host) == f"https://{tls_host}"
        assert make_client().base_url(plain_host) == f"http://{plain_host}"
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            closed = f"127.0.0.1:{unused.getsockname()[1]}"
        assert make_client().base_url(closed) == f"http://{closed}"
    finally:
        for each in (server, plain):
            each.shutdown()
            each.server_close()
