"""The CLI's behaviour where no VM boots: stale state, missing artifacts, unknown names."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from qemu_testkit import provision

from provision.providers.qemu.state import CONFIG_FILE, PID_FILE, write_json_atomic
from provision.providers.qemu.vm import list_vms


def test_stop_cleans_stale_state(state_root: Path) -> None:
    stale = state_root / "vms" / "ghost"
    stale.mkdir(parents=True)
    write_json_atomic(stale / CONFIG_FILE, {"name": "ghost", "tags": {}})
    # A live process that is not this VM's QEMU (a recycled pid) must not count as running.
    (stale / PID_FILE).write_text(f"{os.getpid()}\n")
    ps = json.loads(provision(state_root, "ps", "--json").stdout)
    assert [(vm["name"], vm["state"], vm["pid"]) for vm in ps] == [("ghost", "stopped", None)]
    result = provision(state_root, "stop", "--all")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ghost: stale"
    assert not stale.exists()


def test_missing_artifact_is_a_usage_error(state_root: Path, tmp_path: Path) -> None:
    result = provision(state_root, "run", "qemu", str(tmp_path / "out" / "web"), "--accel", "tcg")
    assert result.returncode == 2
    assert f"artifact not found: {tmp_path / 'out' / 'web'}" in result.stderr
    assert "hint:" in result.stderr
    assert list_vms(state_root) == []


def test_stop_unknown_vm_is_a_usage_error(state_root: Path) -> None:
    result = provision(state_root, "stop", "nope")
    assert result.returncode == 2
    assert "no VM named 'nope'" in result.stderr


def test_publishing_a_taken_port_is_refused_before_qemu_starts(
    state_root: Path, tmp_path: Path
) -> None:
    (tmp_path / "web.iso").write_bytes(b"\0" * 0x8001 + b"CD001")  # what an ISO starts with
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = provision(state_root, "run", "qemu", str(tmp_path / "web.iso"),
                           "--accel", "tcg", "-d", "-p", f"{port}:80")  # fmt: skip
    assert result.returncode == 2
    assert f"127.0.0.1:{port}/tcp is in use" in result.stderr
    assert list_vms(state_root) == []
