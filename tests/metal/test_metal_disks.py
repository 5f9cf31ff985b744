"""The metal target's local disks and wipes, through the real provider, boot-answer code and
Redfish protocol (the Redfish stand-in of the virtual lab, over machines that only keep a power
state and, like firmware, ask `provision serve`'s answer when they boot): publishing writes the
image's disk once, a reserved machine with a disk is told to install it, a re-imaged machine
stays its group's and its group takes it again, and destroy boots the wipe profile, waits for
the machine to power itself off (or a bounded time), then releases it."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from metal_testkit import PASSWORD, RedfishLab, VirtualMachine, lab_file_text

from provision.builders.disk import read_partitions
from provision.clock import SystemClock
from provision.errors import SpecError
from provision.providers import get_target
from provision.providers.metal.boot import answer_ipxe
from provision.providers.metal.lab import parse_lab
from provision.providers.metal.provider import MetalProvider
from provision.providers.metal.reservations import read_reservations
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_GROUP,
    TAG_SLOT,
    CreateRequest,
    ProviderError,
    destroy_for_reason,
)
from provision.reconcile.spec import ProviderSpec
from provision.target import Artifact

BASE = "http://10.0.2.2:8080"
WIPE = """\
profiles:
  wipe: {kernel: wipe/kernel, initrd: [wipe/initrd.img], cmdline: "provision.wipe=/dev/vda"}
"""


@dataclass
class PaperMachine(VirtualMachine):
    """A lab machine without QEMU: a power state; when it boots it asks serve's answer for its
    MAC (what its firmware would fetch), and a wipe answer powers it off after ``wipe_seconds``
    (None: the wipe never finishes)."""

    state: Path = Path()
    lab: Path = Path()
    powered: bool = False
    answers: list[str] = field(default_factory=list)
    wipe_seconds: float | None = 0.2

    def on(self) -> bool:
        return self.powered

    def _boot(self) -> None:
        script, answer = answer_ipxe(
            parse_lab(self.lab.read_text()), {"mac": self.mac}, BASE, self.state
        )
        self.answers.append(answer + "\n" + script)
        if answer.startswith("wipe ") and self.wipe_seconds is not None:
            threading.Timer(self.wipe_seconds, self.power_off).start()

    def power_on(self) -> None:
        if not self.powered:
            self.powered = True
            self.power_ons += 1
            self._boot()

    def power_off(self) -> None:
        self.powered = False

    def reset(self) -> None:
        if self.powered:
            self._boot()
        else:
            self.power_on()

    def press_power_button(self) -> None:
        self.powered = False


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[MetalProvider, list[PaperMachine], Path]]:
    machines = [
        PaperMachine(
            f"node-{n}",
            f"52:54:00:d1:00:0{n}",
            tmp_path / f"node-{n}",
            "-",
            disk=tmp_path / "unused.disk",  # the lab file gives it disk: /dev/vda
            state=tmp_path / "metal-state",
            lab=tmp_path / "lab.yml",
        )
        for n in (1, 2, 3)
    ]
    redfish = RedfishLab(list(machines))
    (tmp_path / "bmc.pass").write_text(PASSWORD)
    (tmp_path / "lab.yml").write_text(
        lab_file_text(list(machines), redfish, tmp_path / "bmc.pass", WIPE)
    )
    options = {
        "lab": "lab.yml",
        "state": "metal-state",
        "powerTimeout": "5s",
        "diskBootSize": "16M",
        "diskDataSize": "8M",
        "wipeTimeout": "2s",
    }
    provider = get_target("metal").create_provider(
        ProviderSpec("lab", "metal", options=options, base=tmp_path), SystemClock()
    )
    assert isinstance(provider, MetalProvider)
    yield provider, machines, tmp_path
    redfish.server.shutdown()
    redfish.server.server_close()


def write_artifact(directory: Path, seed: int) -> Artifact:
    """A kernel+initrd build as the pipeline leaves it (stand-in kernel and initrd bytes)."""
    directory.mkdir(parents=True)
    rng = random.Random(seed)
    files = []
    for name, size in (("web-kernel", 3 << 20), ("web-initrd.img", 2 << 20)):
        (directory / name).write_bytes(rng.randbytes(size))
        files.append(directory / name)
    (directory / "web-cmdline").write_text("console=ttyS0\n")
    files.append(directory / "web-cmdline")
    digest = f"sha256:{seed:064x}"
    manifest = directory / "web.manifest.json"
    manifest.write_text(json.dumps({"image_digest": digest, "source_date_epoch": 0}))
    return Artifact("web", digest, "kernel+initrd", tuple(files), manifest)


def request(key: str, group: str, image: str, **properties: str) -> CreateRequest:
    tags = {TAG_CLUSTER: "lab", TAG_GROUP: group, TAG_SLOT: key}
    return CreateRequest(key, f"lab-{group}-{key}", image, properties, tags, 1)


def test_a_lab_disk_must_be_a_device_path() -> None:
    bad = 'machines:\n  - {name: a, macs: ["52:54:00:00:00:01"], disk: "../etc/passwd"}\n'
    with pytest.raises(
        SpecError, match=r"lab.yml:2:\d+: machines\[0\].disk: must be a device path"
    ):
        parse_lab(bad, "lab.yml")
    good = 'machines:\n  - {name: a, macs: ["52:54:00:00:00:01"], disk: /dev/nvme0n1}\n'
    assert parse_lab(good).machines[0].disk == "/dev/nvme0n1"


def test_publish_writes_the_disk_once_and_machines_are_told_to_install_it(
    lab: tuple[MetalProvider, list[PaperMachine], Path],
) -> None:
    provider, machines, tmp_path = lab
    target = get_target("metal")
    artifact = write_artifact(tmp_path / "build", 1)
    assert target.find_image(provider, artifact.digest) is None
    assert target.publish(provider, artifact).reused is False
    disk = tmp_path / "metal-state/images" / f"{1:064x}" / "disk-bios-16m-8m.img"
    label, parts = read_partitions(disk)
    assert label == "dos" and [p.size for p in parts] == [16 << 20, 8 << 20]
    written = disk.stat().st_mtime_ns
    assert target.find_image(provider, artifact.digest) == artifact.digest
    assert target.publish(provider, artifact).reused is True
    assert disk.stat().st_mtime_ns == written

    provider.create_instance(request("a", "web", artifact.digest))
    script = machines[0].answers[-1]
    assert f"provision.install={BASE}/files/{1:064x}/disk-bios-16m-8m.img" in script
    assert "provision.disk=/dev/vda provision.mac=52:54:00:d1:00:01" in script
    assert "provision.hostname=lab-web-a" in script


def test_a_replaced_machine_stays_its_groups_and_is_not_wiped(
    lab: tuple[MetalProvider, list[PaperMachine], Path],
) -> None:
    provider, machines, tmp_path = lab
    image = write_artifact(tmp_path / "build", 1)
    get_target("metal").publish(provider, image)
    a = provider.create_instance(request("a", "web", image.digest, wipe="wipe"))
    b = provider.create_instance(request("b", "web", image.digest, wipe="wipe"))
    assert (a.id, b.id) == ("node-1", "node-2")
    destroy_for_reason(provider, b.id, 1, replacing=True)  # a re-image of node-2
    assert not machines[1].on() and not any("wipe" in x for x in machines[1].answers)
    held = read_reservations(provider.state)["node-2"]
    assert held.released
    assert [i.id for i in provider.list_instances({TAG_GROUP: "web"}).instances] == ["node-1"]
    # a released machine boots nothing of the cluster's (the lab's default)
    assert answer_ipxe(provider.lab(), {"mac": machines[1].mac}, BASE, provider.state)[1] == (
        "default exit"
    )
    destroy_for_reason(provider, a.id, 1, replacing=False)  # node-1 leaves: wiped, released
    assert any(x.startswith("wipe node-1") for x in machines[0].answers)
    assert "node-1" not in read_reservations(provider.state)
    # the group's next machine is the one it released (its disk has the group's data), though
    # node-1 comes first by name; another group gets a machine nobody held
    c = provider.create_instance(request("c", "web", image.digest))
    assert c.id == "node-2" and machines[1].power_ons == 2
    d = provider.create_instance(request("d", "db", image.digest))
    assert d.id == "node-1"


def test_destroy_waits_for_the_wipe_or_a_bounded_time(
    lab: tuple[MetalProvider, list[PaperMachine], Path],
) -> None:
    provider, machines, tmp_path = lab
    image = write_artifact(tmp_path / "build", 1)
    get_target("metal").publish(provider, image)
    provider.create_instance(request("a", "web", image.digest, wipe="wipe"))
    machines[0].wipe_seconds = 1.0
    started = time.monotonic()
    provider.destroy_instance("node-1", 1)
    took = time.monotonic() - started
    assert 1.0 <= took < 2.0, took  # it waited for the machine to power itself off
    wipe_answer = machines[0].answers[-1]
    assert wipe_answer.startswith("wipe node-1 (wipe)") and "provision.wipe=/dev/vda" in wipe_answer
    assert not machines[0].on() and read_reservations(provider.state) == {}

    provider.create_instance(request("b", "web", image.digest, wipe="wipe"))
    machines[0].wipe_seconds = None  # this wipe never finishes
    started = time.monotonic()
    provider.destroy_instance("node-1", 1)
    took = time.monotonic() - started
    assert 2.0 <= took < 5.0, took  # wipeTimeout, then powered off all the same
    assert not machines[0].on() and read_reservations(provider.state) == {}


def test_a_wipe_profile_the_lab_lacks_is_refused_at_create(
    lab: tuple[MetalProvider, list[PaperMachine], Path],
) -> None:
    provider, machines, _ = lab
    with pytest.raises(ProviderError, match="wipe profile 'erase' is not a profile"):
        provider.create_instance(request("a", "web", "sha256:" + "0" * 64, wipe="erase"))
    assert not any(m.on() for m in machines) and read_reservations(provider.state) == {}


def test_another_group_gets_a_released_machine_only_after_its_wipe(
    lab: tuple[MetalProvider, list[PaperMachine], Path],
) -> None:
    provider, machines, tmp_path = lab
    image = write_artifact(tmp_path / "build", 1)
    get_target("metal").publish(provider, image)
    for key in ("a", "b", "c"):
        provider.create_instance(request(key, "web", image.digest, wipe="wipe"))
    destroy_for_reason(provider, "node-2", 1, replacing=True)  # released, never taken back
    before = len(machines[1].answers)
    d = provider.create_instance(request("d", "db", image.digest))
    assert d.id == "node-2"
    answers = [a.split("\n")[0] for a in machines[1].answers[before:]]
    assert answers[0] == "wipe node-2 (wipe)"  # web's data wiped first
    assert answers[-1].startswith("reservation node-2")  # then db's image
    held = read_reservations(provider.state)["node-2"]
    assert held.key == "d" and held.wiping == "" and not held.released and machines[1].on()
