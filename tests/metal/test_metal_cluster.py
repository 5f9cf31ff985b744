"""End to end on a virtual bare-metal lab: `provision serve` answers two QEMU machines powered
through Redfish, each with a blank local disk; `provision up` reserves both, sets a one-time
network boot, powers them on, and they PXE-boot examples/web.yml (named by provision.hostname),
install it onto their disk and answer healthy; a file the image writes into the disk's
provision-data partition on its first boot is still there after a new image re-imaged them one
at a time (never fewer than one answering) and their disks hold the new image (a copy of one
boots by itself, without the boot server, into the new image with the note); `provision down`
boots the group's wipe profile (the disks are zeroed, the machines power themselves off) and
releases them. The BMC password never appears in anything the commands print or write."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli_testkit import run_provision
from components_testkit import REPO, ensure_web_components
from metal_testkit import PASSWORD, RedfishLab, VirtualMachine, free_port, lab_file_text

from provision.agent import read_agent
from provision.builders.disk import read_partitions
from provision.providers.qemu.state import PortMapping
from provision.providers.qemu.vm import VMConfig, start_vm, stop_vm

pytestmark = [pytest.mark.boot, pytest.mark.timeout(900)]

DISK_MIB = 64
# the wipe profile: any kernel+initrd of provision's init, told to zero the disk (the test puts
# the first image's there before `down`)
WIPE_PROFILE = """\
profiles:
  wipe: {kernel: wipe/web-kernel, initrd: [wipe/web-initrd.img],
         cmdline: "console=ttyS0 provision.wipe=/dev/vda"}
"""
# the image's first boot writes a note into provision-data (a random id and the image that wrote
# it), never overwritten; every boot copies what the metadata component wrote from serve's
# metadata (the group's userData file motd, the image digest) there too; its web server serves
# that directory. It does not sync: ext4's delayed allocation keeps a note written less than
# 30 s before in memory, and it survives the roll only because the provider shuts the machine
# down in order (GracefulShutdown: the power button, init's shutdown syncs) before a forced off
NOTE = """\
  - name: note
    image: provision/agent:92a6e56c095d
    command: ["/bin/sh", "-c", "[ -e /var/persist/note ] || { cat /proc/sys/kernel/random/uuid; cat /host/etc/provision/image.json; } >/var/persist/note; cat /run/config/motd /run/config/provision/image >/var/persist/metadata 2>&1; true"]
    binds: ["/var/persist:/var/persist", "/etc/provision:/host/etc/provision:ro", "/run/config:/run/config:ro"]
services:
"""


def image_text(page: str) -> str:
    """examples/web.yml writing the note, serving /var/persist on port 80, with its own page."""
    text = (REPO / "examples/web.yml").read_text()
    for old, new in (
        ("services:\n", NOTE),
        ('"-h", "/srv/www"]', '"-h", "/var/persist"]'),
        ('binds: ["/srv/www:/srv/www:ro"]', 'binds: ["/var/persist:/var/persist:ro"]'),
        ("Hello from a provision machine", page),
    ):
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def read_note(machine: VirtualMachine) -> tuple[str, str]:
    """(the id, the digest of the image that wrote it) of the note on the machine's disk."""
    reply = requests.get(f"http://127.0.0.1:{machine.forwards[80]}/note", timeout=10)
    assert reply.ok, reply.status_code
    first, _, rest = reply.text.partition("\n")
    return first.strip(), str(json.loads(rest)["digest"])


def read_metadata(machine: VirtualMachine) -> str:
    """What the machine's metadata component wrote from serve's metadata at its last boot."""
    reply = requests.get(f"http://127.0.0.1:{machine.forwards[80]}/metadata", timeout=10)
    assert reply.ok, reply.status_code
    return reply.text


def boot_partition(disk: Path) -> bytes:
    _, parts = read_partitions(disk)
    with open(disk, "rb") as f:
        f.seek(parts[0].start)
        return f.read(parts[0].size)


MOTD = "user data from the group"
CLUSTER = """\
cluster: lab
journal: journal.db
providers:
  metal:
    type: metal
    options: {{lab: lab.yml, state: metal-state, powerTimeout: 30s, shutdownTimeout: 60s,
               diskBootSize: 40M, diskDataSize: 16M, wipeTimeout: 3m}}
groups:
  - name: web
    provider: metal
    image: {image}
    size: 2
    properties: {{selector: {{rack: a}}, wipe: wipe, userData: {{motd: {{content: "{motd}\\n"}}}}}}
    update: {{maxSurge: 0, maxUnavailable: 1}}
    health: {{port: 7080, path: /, startupTimeout: 4m, unhealthyTimeout: 1m}}
"""


def provision(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {
        "PROVISION_CACHE": str(ensure_web_components()),
        "PROVISION_ARTIFACTS": str(cwd / "artifacts"),
    }
    return run_provision(*args, cwd=cwd, env=env, timeout=timeout)


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
            disk=tmp_path / "vms" / f"node-{n}.disk",
            forwards={80: free_port()},
        )
        for n in (1, 2)
    ]
    for m in machines:
        assert m.disk is not None
        m.disk.parent.mkdir(parents=True, exist_ok=True)
        with open(m.disk, "wb") as f:
            f.truncate(DISK_MIB << 20)  # blank: no partition table
    redfish = RedfishLab(machines)
    (tmp_path / "bmc.pass").write_text(PASSWORD + "\n")
    (tmp_path / "lab.yml").write_text(
        lab_file_text(machines, redfish, tmp_path / "bmc.pass", WIPE_PROFILE)
    )
    for name, page in (("v1", "the first image"), ("v2", "the second image")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "web.yml").write_text(image_text(page))
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
    (cwd / "cluster.yml").write_text(CLUSTER.format(image="v1/web.yml", motd=MOTD))
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
    names = {
        r["machine"]: r["name"]
        for r in json.loads((cwd / "metal-state/reservations.json").read_text())["reservations"]
    }
    notes = {}
    for m in machines:
        assert m.on() and m.power_ons == 1
        assert m.boot_override["BootSourceOverrideTarget"] == "Pxe"
        agent = read_agent("127.0.0.1", m.agent_port)
        assert agent is not None and agent.digest == image_v1
        assert set(agent.services) >= {"web", "agent"}
        assert agent.hostname == names[m.name] != "provision"  # provision.hostname=NAME
        console = m.serial.read_text(errors="replace")
        assert "installed onto /dev/vda" in console, console[-3000:]
        assert "(provision-data) mounted at /var/persist" in console
        notes[m.name] = read_note(m)
        assert notes[m.name][1] == image_v1
        assert read_metadata(m) == f"{MOTD}\n{image_v1}\n"  # from serve's /v1/metadata/MAC
    boots = requests.get(f"{serve_url}/v1/boots", timeout=5).json()
    assert {b["answer"].split(" (")[0] for b in boots} == {
        "reservation node-1",
        "reservation node-2",
    }

    (cwd / "cluster.yml").write_text(CLUSTER.format(image="v2/web.yml", motd=MOTD))
    redfish.resets.clear()
    watcher = Watcher(machines)
    watcher.start()
    rolled = provision(cwd, "up", "cluster.yml", "--json", "--timeout", "600")
    watcher.halt.set()
    watcher.join()
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    image_v2 = json.loads(rolled.stdout)["groups"][0]["image"]
    assert image_v2 != image_v1
    disk_v2 = next((cwd / "metal-state/images" / image_v2.split(":")[1]).glob("disk-*.img"))
    for m in machines:
        assert m.disk is not None
        agent = read_agent("127.0.0.1", m.agent_port)
        assert agent is not None and agent.digest == image_v2
        assert "reimaged onto /dev/vda" in m.serial.read_text(errors="replace")
        assert read_note(m) == notes[m.name]  # written by the first image, kept (not synced)
        resets = [kind for name, kind in redfish.resets if name == m.name]
        assert "GracefulShutdown" in resets and "ForceOff" not in resets, resets  # in order
        assert read_metadata(m) == f"{MOTD}\n{image_v2}\n"
        assert boot_partition(m.disk) == boot_partition(disk_v2)  # the disk holds the new image
    assert watcher.fewest_answering() >= 1, (
        f"both machines were down at once during the roll: {watcher.samples}"
    )

    # the installed disk boots by itself (no boot server, no network boot): the new image, the note
    alone = cwd / "disk-alone"
    alone.mkdir()
    copy = alone / "node-1-bios.img"
    assert machines[0].disk is not None
    shutil.copyfile(machines[0].disk, copy)
    agent_port, web_port = free_port(), free_port()
    config = VMConfig(
        name="disk-alone",
        artifact=copy,
        accel="tcg",
        mem_mib=512,
        publish=(PortMapping(agent_port, 7080), PortMapping(web_port, 80)),
    )
    handle = start_vm(config, state_root=alone / "state", detach=True)
    try:
        deadline = time.monotonic() + 120
        agent = None
        while agent is None or agent.digest != image_v2:
            if time.monotonic() > deadline:
                console = handle.serial_log.read_text(errors="replace")
                pytest.fail(f"the disk alone did not boot the new image:\n{console[-3000:]}")
            time.sleep(1)
            agent = read_agent("127.0.0.1", agent_port)
        reply = requests.get(f"http://127.0.0.1:{web_port}/note", timeout=10)
        assert reply.ok and reply.text.partition("\n")[0].strip() == notes["node-1"][0]
    finally:
        stop_vm("disk-alone", alone / "state", timeout=0.5)

    v1_files = cwd / "metal-state/images" / image_v1.split(":")[1]
    (cwd / "metal-state/images/wipe").mkdir()
    for name in ("web-kernel", "web-initrd.img"):
        os.link(v1_files / name, cwd / "metal-state/images/wipe" / name)
    down = provision(cwd, "down", "cluster.yml")
    assert down.returncode == 0, down.stderr
    assert all(not m.on() for m in machines)
    for m in machines:
        assert m.disk is not None
        assert "wipe: /dev/vda zeroed, powering off" in m.serial.read_text(errors="replace")
        with open(m.disk, "rb") as f:
            assert not any(f.read()), f"{m.disk} was not wiped"
    answers = [b["answer"] for b in requests.get(f"{serve_url}/v1/boots", timeout=5).json()]
    assert sum(a.startswith("wipe ") for a in answers) == 2, answers
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
