"""`provision run qemu` with a relative artifact path (QEMU runs in the VM's state directory),
and a host port that a stopped VM's connections leave in TIME_WAIT (QEMU's hostfwd binds it
with SO_REUSEADDR, so the pre-check must too)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from qemu_testkit import MARKER

from provision.errors import UsageError
from provision.providers.qemu.vm import PortMapping, check_port_free


@pytest.mark.boot
def test_relative_artifact_path_boots(hybrid_iso: Path, state_root: Path) -> None:
    env = {**os.environ, "PROVISION_STATE": str(state_root)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "provision",
            "run",
            "qemu",
            hybrid_iso.name,
            "--accel",
            "tcg",
            "--mem",
            "128",
        ],
        cwd=hybrid_iso.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert MARKER in result.stdout


def time_wait_port() -> int:
    """A port whose server closed its side of a connection first: TIME_WAIT on 127.0.0.1:PORT."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()
            client.recv(1)
    return port


def test_port_in_time_wait_is_free_but_a_listener_is_not() -> None:
    port = time_wait_port()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the old pre-check did
    check_port_free(PortMapping(port, 80))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UsageError, match="in use"):
            check_port_free(PortMapping(int(taken.getsockname()[1]), 80))
