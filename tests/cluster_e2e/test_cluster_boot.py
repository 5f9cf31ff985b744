"""End to end: `provision up` a two-machine QEMU cluster, roll it to a new image, `provision
down`. Machines boot the stand-in agent image (standin.py); while the roll runs, a watcher
counts the VMs on disk and asks each one's agent, so the surge ceiling and availability floor
are checked from outside the engine."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standin import host_kernel, write_standin

from provision.providers.qemu_cluster import read_agent
from provision.providers.qemu_state import list_vms

pytestmark = [pytest.mark.boot, pytest.mark.timeout(240)]

SIZE, MAX_SURGE, MAX_UNAVAILABLE = 2, 1, 0
CLUSTER = """\
cluster: e2e
journal: journal.db
providers:
  local:
    type: qemu
    options: {{stateRoot: state, accel: tcg, stopTimeout: 5s}}
groups:
  - name: web
    provider: local
    image: {image}
    size: 2
    properties: {{mem: 256M, cpus: 1}}
    update: {{maxSurge: 1, maxUnavailable: 0}}
    health: {{port: 7080, path: /, startupTimeout: 90s, unhealthyTimeout: 30s}}
"""


def provision(*args: str, cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provision", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def up(cwd: Path) -> dict[str, Any]:
    done = provision("up", "cluster.yml", "--json", "--interval", "0.5", "--timeout", "150", cwd=cwd)
    assert done.returncode == 0, done.stderr
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def machines_of(status: dict[str, Any]) -> list[dict[str, Any]]:
    [group] = status["groups"]
    machines: list[dict[str, Any]] = group["machines"]
    return machines


class Watcher(threading.Thread):
    """Samples the cluster every 0.2 s: VMs running (from their state directories) and VMs
    available (running, and their agent has answered at least once)."""

    def __init__(self, state: Path) -> None:
        super().__init__(daemon=True)
        self.state = state
        self.halt = threading.Event()
        self.answered: set[str] = set()
        self.samples: list[tuple[int, int]] = []  # (running, available)

    def run(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            while not self.halt.is_set():
                running = [vm for vm in list_vms(self.state) if vm.state == "running"]
                agents = [next((p.host for p in vm.published if p.guest == 7080), 0) for vm in running]
                replies = list(pool.map(lambda port: read_agent("127.0.0.1", port, timeout=1.0), agents))
                self.answered |= {vm.name for vm, reply in zip(running, replies, strict=True) if reply is not None}
                self.samples.append((len(running), sum(1 for vm in running if vm.name in self.answered)))
                time.sleep(0.2)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    if host_kernel() is None or not Path("/bin/busybox").is_file():
        pytest.skip("needs linux-image-cloud-amd64 and busybox-static")
    write_standin(tmp_path / "v1", "v1")
    write_standin(tmp_path / "v2", "v2")
    (tmp_path / "cluster.yml").write_text(CLUSTER.format(image="v1/standin"))
    yield tmp_path
    for vm in list_vms(tmp_path / "state"):  # whatever happened, leave no VM behind
        if vm.pid is not None:
            os.kill(vm.pid, 9)


def test_up_roll_down_a_two_machine_cluster(workdir: Path) -> None:
    state = workdir / "state"
    started = time.monotonic()
    first = up(workdir)
    boot_seconds = time.monotonic() - started
    machines = machines_of(first)
    image_v1 = first["groups"][0]["image"]
    assert len(machines) == SIZE
    for m in machines:
        assert m["condition"] == "available" and m["image"] == image_v1
        assert m["services"] == {"standin": "running"}
        host, port = m["agent"].split(":")
        reply = read_agent(host, int(port))  # and straight from the agent, too
        assert reply is not None and reply.digest == "standin-v1"
    old_names = {m["machine"] for m in machines}
    assert {vm.name for vm in list_vms(state)} == old_names

    # a fixpoint: up again changes nothing
    again = up(workdir)
    assert {m["machine"] for m in machines_of(again)} == old_names and again["passes"] == 1

    # roll to the second image, watched from outside
    (workdir / "cluster.yml").write_text(CLUSTER.format(image="v2/standin"))
    watcher = Watcher(state)
    watcher.start()
    started = time.monotonic()
    try:
        rolled = up(workdir)
    finally:
        watcher.halt.set()
        watcher.join()
    roll_seconds = time.monotonic() - started
    image_v2 = rolled["groups"][0]["image"]
    assert image_v2 != image_v1
    machines = machines_of(rolled)
    assert len(machines) == SIZE and not old_names & {m["machine"] for m in machines}
    for m in machines:
        assert m["condition"] == "available" and m["image"] == image_v2 and m["agent_digest"] == "standin-v2"
    running = [r for r, _ in watcher.samples]
    available = [a for _, a in watcher.samples]
    assert len(watcher.samples) > 10
    assert max(running) <= SIZE + MAX_SURGE, watcher.samples
    assert max(running) == SIZE + MAX_SURGE  # the surge was used: a new machine before an old one went
    assert min(available) >= SIZE - MAX_UNAVAILABLE, watcher.samples

    # down: no VM, no state directory, no QEMU left
    pids = [vm.pid for vm in list_vms(state)]
    done = provision("down", "cluster.yml", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "none left" in done.stdout
    assert list_vms(state) == [] and list((state / "vms").iterdir()) == []
    time.sleep(0.5)
    for pid in pids:
        assert pid is not None and not _is_live_qemu(pid)
    print(f"\nboot to healthy: {boot_seconds:.1f}s, roll: {roll_seconds:.1f}s, samples: {len(watcher.samples)}")


def _is_live_qemu(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return "qemu" in stat and stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
