"""End to end on a virtual bare-metal lab: `provision serve` answers two disk-less QEMU machines
powered through Redfish; `provision up` reserves both, sets a one-time network boot, powers them
on, and they PXE-boot examples/web.yml until the agent answers healthy; a new image re-images
them one at a time (never fewer than one answering); `provision down` powers them off and
releases them. The BMC password never appears in anything the commands print or write."""

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

import pytest
import requests
from components_testkit import REPO, ensure_web_components
from metal_testkit import PASSWORD, RedfishLab, VirtualMachine, free_port, lab_file_text

from provision.agent import read_agent

pytestmark = [pytest.mark.boot, pytest.mark.timeout(900)]

CLUSTER = """\
cluster: lab
journal: journal.db
providers:
  metal: {{type: metal, options: {{lab: lab.yml, state: metal-state, powerTimeout: 30s}}}}
groups:
  - name: web
    provider: metal
    image: {image}
    size: 2
    properties: {{selector: {{rack: a}}}}
    update: {{maxSurge: 0, maxUnavailable: 1}}
    health: {{port: 7080, path: /, startupTimeout: 4m, unhealthyTimeout: 1m}}
"""


def provision(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PROVISION_CACHE": str(ensure_web_components()),
        "PROVISION_ARTIFACTS": str(cwd / "artifacts"),
    }
    return subprocess.run(
        [sys.executable, "-m", "provision", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        env=env,
    )


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Path, list[VirtualMachine], RedfishLab, str]]:
    ensure_web_components()
    port = free_port()
    machines = [
        VirtualMachine(
            f"node-{n}",
            f"52:54:00:1a:b0:0{n}",
            tmp_path / "vms" / f"node-{n}",
            f"http://10.0.2.2:{port}/boot.ipxe",
        )
        for n in (1, 2)
    ]
    redfish = RedfishLab(machines)
    (tmp_path / "bmc.pass").write_text(PASSWORD + "\n")
    (tmp_path / "lab.yml").write_text(lab_file_text(machines, redfish, tmp_path / "bmc.pass"))
    text = (REPO / "examples/web.yml").read_text()
    for name, body in (
        ("v1", text),
        ("v2", text.replace("Hello from a provision machine", "Hello from the second image")),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "web.yml").write_text(body)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "provision",
            "serve",
            "--lab",
            "lab.yml",
            "--state",
            "metal-state",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/boot.ipxe", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline and serve.poll() is None, (
            tmp_path / "serve.log"
        ).read_text()
        time.sleep(0.2)
    try:
        yield tmp_path, machines, redfish, f"http://127.0.0.1:{port}"
    finally:
        serve.terminate()
        serve.wait(timeout=10)
        log.close()
        redfish.close()


class Watcher(threading.Thread):
    """Which machines are powered and which agents answer, sampled every 0.5 s (all machines at
    once; an agent of an emulated machine may take a while to answer under load)."""

    def __init__(self, machines: list[VirtualMachine]) -> None:
        super().__init__(daemon=True)
        self.machines = machines
        self.halt = threading.Event()
        self.samples: list[tuple[float, str]] = []  # (time, "node-1:on+agent node-2:off")

    def run(self) -> None:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(self.machines)) as pool:
            while not self.halt.is_set():
                answers = list(
                    pool.map(
                        lambda m: read_agent("127.0.0.1", m.agent_port, timeout=3.0), self.machines
                    )
                )
                text = " ".join(
                    f"{m.name}:{'on' if m.on() else 'off'}{'+agent' if a else ''}"
                    for m, a in zip(self.machines, answers, strict=True)
                )
                self.samples.append((round(time.monotonic() - started, 1), text))
                time.sleep(0.5)

    def fewest_answering(self) -> int:
        """The fewest machines available at once. An emulated machine's agent sometimes takes
        longer than the 3 s time-out under load: a machine counts as available when it answered
        in this sample or the one before (a re-image keeps its agent silent for ~30 s)."""
        fewest = len(self.machines)
        previous: set[str] = set()
        for _, text in self.samples:
            states = dict(part.split(":") for part in text.split())
            answering = {name for name, state in states.items() if state.endswith("+agent")}
            powered = {name for name, state in states.items() if state.startswith("on")}
            fewest = min(fewest, len(answering | (previous & powered)))
            previous = answering
        return fewest


def test_a_lab_network_boots_rolls_and_goes_down(
    lab: tuple[Path, list[VirtualMachine], RedfishLab, str],
) -> None:
    cwd, machines, redfish, serve_url = lab
    (cwd / "cluster.yml").write_text(CLUSTER.format(image="v1/web.yml"))
    plan = provision(cwd, "plan", "cluster.yml")
    assert plan.returncode == 0 and "will build" in plan.stdout, plan.stderr
    assert all(not m.on() for m in machines)  # plan powers nothing

    up = provision(cwd, "up", "cluster.yml", "--json", "--timeout", "420")
    assert up.returncode == 0, up.stderr[-3000:]
    status = json.loads(up.stdout)
    image_v1 = status["groups"][0]["image"]
    assert image_v1.startswith("sha256:")
    assert sorted(m["condition"] for m in status["groups"][0]["machines"]) == [
        "available",
        "available",
    ]
    for m in machines:
        assert m.on() and m.power_ons == 1
        assert m.boot_override["BootSourceOverrideTarget"] == "Pxe"
        agent = read_agent("127.0.0.1", m.agent_port)
        assert agent is not None and agent.digest == image_v1
        assert set(agent.services) >= {"web", "agent"}
    boots = requests.get(f"{serve_url}/v1/boots", timeout=5).json()
    assert {b["answer"].split(" (")[0] for b in boots} == {
        "reservation node-1",
        "reservation node-2",
    }

    (cwd / "cluster.yml").write_text(CLUSTER.format(image="v2/web.yml"))
    watcher = Watcher(machines)
    watcher.start()
    rolled = provision(cwd, "up", "cluster.yml", "--json", "--timeout", "600")
    watcher.halt.set()
    watcher.join()
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    image_v2 = json.loads(rolled.stdout)["groups"][0]["image"]
    assert image_v2 != image_v1
    for m in machines:
        agent = read_agent("127.0.0.1", m.agent_port)
        assert agent is not None and agent.digest == image_v2
    assert watcher.fewest_answering() >= 1, (
        f"both machines were down at once during the roll: {watcher.samples}"
    )

    down = provision(cwd, "down", "cluster.yml")
    assert down.returncode == 0, down.stderr
    assert all(not m.on() for m in machines)
    reservations = json.loads((cwd / "metal-state" / "reservations.json").read_text())
    assert reservations == {"reservations": []}

    seen = [
        plan.stdout,
        plan.stderr,
        up.stdout,
        up.stderr,
        rolled.stdout,
        rolled.stderr,
        down.stdout,
        down.stderr,
        (cwd / "serve.log").read_text(),
        (cwd / "journal.db").read_bytes().decode(errors="replace"),
    ]
    assert not any(PASSWORD in text for text in seen)
    assert all(
        auth.startswith("Basic ") for _, _, auth in redfish.requests
    )  # it was sent, to the BMC only
