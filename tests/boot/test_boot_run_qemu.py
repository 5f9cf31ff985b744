"""The user's path: `provision build examples/web.yml`, then `provision run qemu --detach
--publish --data` and `provision stop` (the ACPI power button: init powers off). The user data (JSON) moves the agent to another
port, so the agent answering there shows the CIDATA user data reached /run/config; the
hostname it reports comes from the CD's meta-data."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import boot_rig as rig
import pytest
from boot_machine import free_port
from cli_testkit import run_provision

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot-run-qemu"), pytest.mark.timeout(300)]

AGENT_PORT = 7181


def provision(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_provision(*args, cwd=rig.REPO, env=env, timeout=120)


def agent_status(port: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                last = json.load(r)
            assert isinstance(last, dict)
            states = {s["state"] for s in last["services"].values()}
            if states == {"running"} and len(last["services"]) == 3:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"the agent never reported every service running: {last}")


def test_web_through_run_qemu_publish_and_data(tmp_path: Path) -> None:
    env = {"PROVISION_STATE": str(tmp_path / "state")}
    out = tmp_path / "out"
    _kernel, _initrd, digest = rig.build_with_provision([rig.REPO / "examples/web.yml"], out, "web")
    user_data = {"agent": {"entries": {"port": {"content": f"{AGENT_PORT}\n"}}}}
    host_port = free_port()
    started = provision("run", "qemu", str(out / "web"), "--name", "web-run", "--accel", "tcg",
                        "--detach", "--isolated", "--publish", f"{host_port}:{AGENT_PORT}",
                        "--data", json.dumps(user_data), env=env)  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        status = agent_status(host_port, timeout=150)
        assert status["digest"] == digest
        assert set(status["services"]) == {"dhcpcd", "agent", "web"}
        assert status["hostname"] == "web-run"
        ps = provision("ps", env=env)
        assert "web-run" in ps.stdout
    finally:
        stopped = provision("stop", "web-run", env=env)
    assert stopped.returncode == 0, stopped.stderr
    # the ACPI power button made init stop the services and power off (not a kill)
    assert stopped.stdout.strip() == "web-run: powered-off"
