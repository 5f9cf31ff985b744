"""End to end: `provision up` a two-machine QEMU cluster, roll it to a new image, `provision
down`. Machines boot the stand-in agent image (standin.py); while the roll runs, a watcher
counts the VMs on disk and asks each one's agent, so the surge ceiling and availability floor
are checked from outside the engine."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_testkit import run_provision
from components_testkit import COMPONENTS, ensure_web_components
from standin import host_kernel, write_standin

from provision.agent import read_agent
from provision.providers.qemu.state import list_vms

pytestmark = [pytest.mark.boot, pytest.mark.timeout(400)]

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


REPO = Path(__file__).resolve().parents[2]


def provision(*args: str, cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return run_provision(*args, cwd=cwd, env={"PROVISION_CACHE": str(COMPONENTS)}, timeout=timeout)


@pytest.fixture(scope="session")
def components() -> Path:
    return ensure_web_components()


def up(cwd: Path, timeout: float = 150) -> dict[str, Any]:
    done = provision(
        "up",
        "cluster.yml",
        "--json",
        "--interval",
        "0.5",
        "--timeout",
        str(timeout),
        cwd=cwd,
        timeout=timeout + 60,
    )
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
                agents = [
                    next((p.host for p in vm.published if p.guest == 7080), 0) for vm in running
                ]
                replies = list(
                    pool.map(lambda port: read_agent("127.0.0.1", port, timeout=1.0), agents)
                )
                self.answered |= {
                    vm.name for vm, reply in zip(running, replies, strict=True) if reply is not None
                }
                self.samples.append(
                    (len(running), sum(1 for vm in running if vm.name in self.answered))
                )
                time.sleep(0.2)


@dataclass(frozen=True)
class Variant:
    image_v1: str
    image_v2: str
    services: frozenset[str]
    timeout: float
    agent_reports_image: bool  # the real agent answers the image digest; the stand-in its name

    def agent_digest(self, version: str, image: str) -> str:
        return image if self.agent_reports_image else f"standin-{version}"


def write_web_variants(tmp_path: Path) -> None:
    """examples/web.yml as it is, and with another page: two image specs, two digests."""
    text = (REPO / "examples/web.yml").read_text()
    changed = text.replace("Hello from a provision machine", "Hello from the second image")
    assert changed != text
    for name, body in (("v1", text), ("v2", changed)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "web.yml").write_text(body)


@pytest.fixture(params=["standin", "web"])
def workdir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Variant]]:
    if host_kernel() is None or not Path("/bin/busybox").is_file():
        pytest.fail("needs linux-image-cloud-amd64 and busybox-static (see scripts/setup.sh)")
    if request.param == "standin":
        write_standin(tmp_path / "v1", "v1")
        write_standin(tmp_path / "v2", "v2")
        variant = Variant("v1/standin", "v2/standin", frozenset({"standin"}), 150, False)
    else:
        request.getfixturevalue("components")
        write_web_variants(tmp_path)
        variant = Variant(
            "v1/web.yml", "v2/web.yml", frozenset({"agent", "dhcpcd", "web"}), 200, True
        )
    (tmp_path / "cluster.yml").write_text(CLUSTER.format(image=variant.image_v1))
    yield tmp_path, variant
    for vm in list_vms(tmp_path / "state"):  # whatever happened, leave no VM behind
        if vm.pid is not None:
            os.kill(vm.pid, 9)


def test_up_roll_down_a_two_machine_cluster(workdir: tuple[Path, Variant]) -> None:
    cwd, variant = workdir
    state = cwd / "state"
    started = time.monotonic()
    first = up(cwd, variant.timeout)
    boot_seconds = time.monotonic() - started
    machines = machines_of(first)
    image_v1 = first["groups"][0]["image"]
    assert len(machines) == SIZE
    for m in machines:
        assert m["condition"] == "available" and m["image"] == image_v1
        assert m["services"] == dict.fromkeys(variant.services, "running")
        host, port = m["agent"].split(":")
        reply = read_agent(host, int(port))  # and straight from the agent, too
        assert reply is not None and reply.digest == variant.agent_digest("v1", image_v1)
    old_names = {m["machine"] for m in machines}
    assert {vm.name for vm in list_vms(state)} == old_names

    # a fixpoint: up again changes nothing
    again = up(cwd)
    assert {m["machine"] for m in machines_of(again)} == old_names and again["passes"] == 1

    # roll to the second image, watched from outside
    (cwd / "cluster.yml").write_text(CLUSTER.format(image=variant.image_v2))
    watcher = Watcher(state)
    watcher.start()
    started = time.monotonic()
    try:
        rolled = up(cwd, variant.timeout)
    finally:
        watcher.halt.set()
        watcher.join()
    roll_seconds = time.monotonic() - started
    image_v2 = rolled["groups"][0]["image"]
    assert image_v2 != image_v1
    machines = machines_of(rolled)
    assert len(machines) == SIZE and not old_names & {m["machine"] for m in machines}
    for m in machines:
        assert m["condition"] == "available" and m["image"] == image_v2
        assert m["agent_digest"] == variant.agent_digest("v2", image_v2)
    running = [r for r, _ in watcher.samples]
    available = [a for _, a in watcher.samples]
    assert len(watcher.samples) > 10
    assert max(running) <= SIZE + MAX_SURGE, watcher.samples
    assert (
        max(running) == SIZE + MAX_SURGE
    )  # the surge was used: a new machine before an old one went
    assert min(available) >= SIZE - MAX_UNAVAILABLE, watcher.samples

    # down: no VM, no state directory, no QEMU left
    pids = [vm.pid for vm in list_vms(state)]
    started = time.monotonic()
    done = provision("down", "cluster.yml", cwd=cwd)
    down_seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "none left" in done.stdout
    assert list_vms(state) == [] and list((state / "vms").iterdir()) == []
    time.sleep(0.5)
    for pid in pids:
        assert pid is not None and not _is_live_qemu(pid)
    print(
        f"\n{variant.image_v1}: up {boot_seconds:.1f}s, roll {roll_seconds:.1f}s, down {down_seconds:.1f}s, "
        f"{len(watcher.samples)} samples"
    )


def _is_live_qemu(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return "qemu" in stat and stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
