"""The agent's status CGI (pkg/agent/files/status.cgi), run on this host with exactly the
busybox applets its recipe links, over a service tree as init and runsv lay it out: each
service's state, restarts, uptime and pid from runsv's binary supervise/status (one od
for all of them: a service runsv has not started yet must not shift the others')."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from pkg_testkit import recipe_applets

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "pkg" / "agent"
TAI_UNIX_OFFSET = 4611686018427387914


@pytest.fixture
def agent_applets(tmp_path: Path) -> Path:
    """A PATH holding the agent recipe's busybox links in /bin, nothing else."""
    return recipe_applets(RECIPE, tmp_path / "bin", under="/bin/")


def add_service(root: Path, name: str, starts: int, stat: str | None, want: str = "u",
                pid: int = 0, changed: int = 0) -> None:  # fmt: skip
    """A service directory as init (run, starts) and runsv (supervise/) write it."""
    service = root / name
    (service / "supervise").mkdir(parents=True)
    (service / "run").write_text("#!/bin/sh\n")
    (service / "starts").write_text(f"{starts}\n")
    if stat is None:
        return
    (service / "supervise" / "stat").write_text(stat + "\n")
    state = {"run": 1, "finish": 2}.get(stat.split(",")[0], 0)
    status = struct.pack(">QI", changed + TAI_UNIX_OFFSET, 0)
    status += struct.pack("<I", pid) + bytes([0, ord(want), 0, state])
    (service / "supervise" / "status").write_bytes(status)


def run_status(applets: Path, services: Path, image_json: Path) -> dict[str, object]:
    env = {"PATH": str(applets), "AGENT_SERVICES": str(services),
           "AGENT_IMAGE_JSON": str(image_json)}  # fmt: skip
    done = subprocess.run([str(applets / "sh"), str(RECIPE / "files" / "status.cgi")], env=env,
                          capture_output=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    head, _, body = done.stdout.decode().partition("\r\n\r\n")
    assert head == "Content-Type: application/json\r\nCache-Control: no-store"
    result: dict[str, object] = json.loads(body)
    return result


def test_each_service_state_from_its_own_runsv_status(agent_applets: Path, tmp_path: Path) -> None:
    services = tmp_path / "service"
    now = int(time.time())
    add_service(services, "agent", 1, "run", pid=731, changed=now - 40)
    add_service(services, "b-new", 0, None)  # runsv has not written its status yet
    add_service(services, "crashy", 4, "finish", pid=0, changed=now - 1)
    add_service(services, "dhcpcd.v4", 2, "down, want up", want="u", changed=now - 2)
    add_service(services, "stopped", 1, "down", want="d", changed=now - 9)
    add_service(services, "web", 1, "run, want down", pid=70000, changed=now - 3)
    (services / "not-a-service").mkdir()  # no ./run: not listed
    image = tmp_path / "image.json"
    image.write_text('{"digest": "sha256:' + "ab" * 32 + '", "name": "web"}\n')

    status = run_status(agent_applets, services, image)

    assert status["digest"] == "sha256:" + "ab" * 32
    assert status["hostname"] == socket.gethostname()
    assert isinstance(status["uptime"], float)
    got = status["services"]
    assert isinstance(got, dict)
    assert list(got) == ["agent", "b-new", "crashy", "dhcpcd.v4", "stopped", "web"]
    agent = got["agent"]
    assert (agent["state"], agent["restarts"], agent["pid"]) == ("running", 0, 731)
    assert 39 <= agent["uptime"] <= 45
    assert got["b-new"] == {"state": "starting", "restarts": 0, "uptime": 0, "pid": 0}
    assert got["crashy"] == {"state": "restarting", "restarts": 3, "uptime": 0, "pid": 0}
    assert got["dhcpcd.v4"] == {"state": "restarting", "restarts": 1, "uptime": 0, "pid": 0}
    assert got["stopped"] == {"state": "exited", "restarts": 0, "uptime": 0, "pid": 0}
    assert got["web"]["state"] == "running"
    assert got["web"]["pid"] == 70000


def test_no_services_and_no_image_file(agent_applets: Path, tmp_path: Path) -> None:
    services = tmp_path / "service"
    services.mkdir()
    status = run_status(agent_applets, services, tmp_path / "missing.json")
    assert status["digest"] == ""
    assert status["services"] == {}
