"""examples/web.yml (+ the console shell and a one-capability service) boots with user
data on a CIDATA CD; from the host, through published ports, the agent reports every
service running and the image digest; a killed service is restarted and the agent shows
it; poweroff inside stops everything and QEMU exits 0."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boot_rig as rig
import pytest
from boot_machine import Machine, free_port, write_cidata

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot-web"), pytest.mark.timeout(300)]

SPECS = [rig.REPO / "examples/web.yml", rig.REPO / "tests/boot/specs/web-test.yml"]
SERVICES = {"dhcpcd", "agent", "web", "getty", "captest"}
USER_DATA = {
    "test": {"entries": {"greeting": {"content": "hello from cidata\n", "perm": "0640"}}},
    "agent": {"entries": {}},
}
CAP_NET_BIND_SERVICE = 10


@dataclass
class Web:
    machine: Machine
    digest: str
    agent_port: int
    web_port: int

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.agent_port}/", timeout=10) as r:
            assert r.headers["Content-Type"] == "application/json"
            result: dict[str, Any] = json.load(r)
            return result

    def wait_status(self, ready: Any, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
                if ready(last):
                    return last
            except OSError as exc:
                last = exc
            time.sleep(0.5)
        raise AssertionError(f"agent never got there; last answer: {last}")


def all_running(status: dict[str, Any]) -> bool:
    services = status["services"]
    return set(services) == SERVICES and all(s["state"] == "running" for s in services.values())


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    out: Path = tmp_path_factory.mktemp("web")
    kernel, initrd, digest = rig.build_with_provision(SPECS, out, "web")
    cidata = write_cidata(out / "cidata.iso", json.dumps(USER_DATA), hostname="web-test")
    agent_port, web_port = free_port(), free_port()
    machine = Machine(kernel, initrd, out, publish=[(agent_port, 7080), (web_port, 80)],
                      cidata=cidata)  # fmt: skip
    try:
        booted = Web(machine, digest, agent_port, web_port)
        booted.wait_status(all_running, timeout=120)
        yield booted
    finally:
        machine.kill()


def test_agent_reports_every_service_running_and_the_image_digest(web: Web) -> None:
    status = web.status()
    assert status["digest"] == web.digest
    assert set(status["services"]) == SERVICES
    for name, service in status["services"].items():
        assert service["state"] == "running", name
        assert service["restarts"] == 0, name
        assert service["pid"] > 1, name
        assert 0 <= service["uptime"] <= status["uptime"] + 1, name
    assert status["uptime"] > 0
    assert status["hostname"] == "web-test"  # local-hostname from the CIDATA meta-data


def test_agent_serves_the_boot_times_init_wrote(web: Web) -> None:
    url = f"http://127.0.0.1:{web.agent_port}/cgi-bin/boot-times"
    # init writes it a second after the last service started, at the lowest priority
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["Content-Type"] == "application/json"
            served = json.load(r)
        started = [s for s in served["steps"] if s["step"].startswith("service ")]
        if len(started) == len(SERVICES) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert served == json.loads(web.machine.shell("cat /run/provision/boot-times.json"))
    steps = [s["step"] for s in served["steps"]]
    uptimes = [s["uptime"] for s in served["steps"]]
    assert uptimes == sorted(uptimes) and 0 < uptimes[0] < uptimes[-1]
    expected = ["kernel: initramfs unpacked", "init: stage 1 starts", "init: stage 2 starts",
                "onboot 000-sysctl: starting", "onboot 001-metadata: exited with status 0",
                "starting 5 services under runsv supervision"]  # fmt: skip
    assert [s for s in steps if s in expected] == expected, steps
    assert any(s.startswith("modules loaded: ") and " virtio_net " in s for s in steps), steps
    # the CIDATA CD's modules (on q35: virtio-scsi, then sr_mod and isofs) are loaded before
    # metadata (given block devices) starts; there is no IDE controller to probe
    (modules,) = [i for i, s in enumerate(steps) if s.startswith("modules loaded: ")]
    assert all(f" {m} " in steps[modules] for m in ("virtio_scsi", "sr_mod", "isofs")), steps
    assert modules < steps.index("onboot 001-metadata: starting"), steps
    assert any(s.startswith("IDE modules loaded:") for s in steps), steps  # found no IDE
    for name in SERVICES:
        assert f"service {name}: starting (start 1)" in steps, name
    # each step is also on the console with its uptime
    assert f"provision-init: [{uptimes[-1]:.2f}] {steps[-1]}" in web.machine.console


def test_web_page_through_the_published_port(web: Web) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{web.web_port}/", timeout=10) as r:
        assert b"Hello from a provision machine" in r.read()


def test_user_data_reaches_run_config(web: Web) -> None:
    assert web.machine.shell("cat /run/config/test/greeting") == "hello from cidata\n"
    assert web.machine.shell("stat -c %a /run/config/test/greeting").strip() == "640"
    assert "metadata: read CIDATA from /dev/sr0" in web.machine.console


def test_service_with_fewer_capabilities_lacks_them(web: Web) -> None:
    match = re.search(r"CAPTEST CapEff:\s*([0-9a-f]+)", web.machine.console)
    assert match, "the captest service printed no CapEff"
    assert int(match.group(1), 16) == 1 << CAP_NET_BIND_SERVICE
    # the console shell (capabilities: all) has the full set, so the mask is real
    shell_caps = web.machine.shell("grep CapEff /proc/self/status").split()[1]
    assert int(shell_caps, 16) > 1 << 37


def test_crun_runs_from_a_read_only_binary_without_cloning_itself(web: Web) -> None:
    # crun re-executes itself from a sealed copy (CVE-2019-5736) unless its binary is on a
    # read-only file system: init bind-mounts a read-only ramfs copy over /usr/bin/crun
    fields = web.machine.shell("grep ' /usr/bin/crun ' /proc/mounts").split()
    assert fields[2] == "ramfs" and "ro" in fields[3].split(","), fields
    out = web.machine.shell("echo x >>/usr/bin/crun 2>&1; echo rc=$?")
    assert "rc=1" in out and "Read-only" in out, out
    # each service's `crun run` still runs /usr/bin/crun itself (a clone would be a memfd)
    exes = web.machine.shell(
        "for p in /proc/[0-9]*; do case $(cat $p/cmdline 2>/dev/null | tr '\\0' ' ') in"
        " 'crun --root /run/runc run '*) readlink $p/exe ;; esac; done"
    ).split()
    assert len(exes) >= len(SERVICES) - 1 and set(exes) == {"/usr/bin/crun"}, exes


def test_killed_service_is_restarted_and_the_agent_shows_it(web: Web) -> None:
    before = web.status()["services"]["web"]
    web.machine.shell("crun --root /run/runc kill web KILL")
    after = web.wait_status(
        lambda s: (
            s["services"]["web"]["restarts"] == before["restarts"] + 1
            and s["services"]["web"]["state"] == "running"
        ),
        timeout=60,
    )["services"]["web"]
    assert after["pid"] != before["pid"]
    assert after["uptime"] < 30
    # "running" means runsv runs the container; httpd inside may need a moment to listen
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web.web_port}/", timeout=10) as r:
                assert r.status == 200
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    others = {k: v["restarts"] for k, v in web.status()["services"].items() if k != "web"}
    assert set(others.values()) == {0}


def test_poweroff_inside_stops_services_and_exits_cleanly(web: Web) -> None:
    start = len(web.machine.console)
    web.machine.send("\x1b[1;1Rpoweroff\n")
    assert web.machine.wait_exit(timeout=90) == 0
    tail = web.machine.console[start:]
    assert "shutdown: services stopped" in tail
    assert "reboot: Power down" in tail
    assert "Kernel panic" not in web.machine.console
