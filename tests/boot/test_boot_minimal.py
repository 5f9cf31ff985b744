"""examples/minimal.yml (+ onboot / onshutdown markers) boots, runs onboot containers in
the declared order, supervises its service, and powers off cleanly on the ACPI power
button after the onshutdown containers ran."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import boot_rig as rig
import pytest
from boot_machine import Machine

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot-minimal"), pytest.mark.timeout(300)]

SPECS = [rig.REPO / "examples/minimal.yml", rig.REPO / "tests/boot/specs/minimal-test.yml"]


@pytest.fixture(scope="module")
def minimal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    out: Path = tmp_path_factory.mktemp("minimal")
    kernel, initrd, _digest = rig.build_with_provision(SPECS, out, "minimal")
    machine = Machine(kernel, initrd, out)
    try:
        machine.wait_for(r"# \x1b\[6n", timeout=120)  # the console shell's first prompt
        yield machine
    finally:
        machine.kill()


def test_onboot_containers_ran_in_declared_order(minimal: Machine) -> None:
    console = minimal.console
    marks = re.findall(r"^ONBOOT-MARK (\w+)$", console, re.M)
    assert marks == ["first", "second", "third"]
    for name in ("000-first", "001-second", "002-third"):
        assert f"onboot {name}: exited with status 0" in console
    # every onboot container finished before the first service started
    assert console.index("onboot 002-third: exited") < console.index("service getty: starting")


def test_root_is_the_initramfs_and_the_service_is_supervised_by_runc(minimal: Machine) -> None:
    # the root is the initramfs itself (no copy), a tmpfs bound over itself
    assert re.search(r"^rootfs / rootfs ", minimal.shell("grep ' / ' /proc/mounts"), re.M)
    assert minimal.shell("stat -f -c %T /").strip() == "tmpfs"
    assert minimal.shell("cat /run/service/getty/supervise/stat").strip() == "run"
    # this image runs its containers with runc (provision/runc after provision/init)
    assert minimal.shell("cat /etc/provision-init/runtime").strip() == "runc"
    assert sorted(minimal.shell("runc list -q").split()) == ["getty", "scratch"]
    supervised = minimal.shell("od -An -tu1 -j12 -N4 /run/service/getty/supervise/status").split()
    pid = sum(int(b) << (8 * i) for i, b in enumerate(supervised))
    assert minimal.shell(f"readlink /proc/{pid}/exe").strip() == "/usr/sbin/runc"
    assert minimal.shell("hostname").strip() == "provision"


def test_a_writable_container_writes_to_its_overlay_and_getty_has_none(minimal: Machine) -> None:
    # scratch is writable: its lower/ is overlaid with a tmpfs, where its write landed
    # (it may start after the console shell's prompt)
    wrote = "for i in $(seq 300); do [ -e /containers/services/scratch/rootfs/written ] && break;"
    wrote += " sleep 0.1; done; cat /containers/services/scratch/rootfs/written"
    assert minimal.shell(wrote, timeout=60).strip() == "written"
    assert minimal.shell("ls /containers/services/scratch/lower/written 2>&1; true").startswith(
        "ls: "
    )
    mounts = minimal.shell("cat /proc/mounts")
    assert " /containers/services/scratch/rootfs overlay " in mounts
    # getty's label makes its root read-only: no overlay to set up
    assert " /containers/services/getty/rootfs overlay " not in mounts
    assert minimal.shell("ls -d /containers/services/getty/lower 2>&1; true").startswith("ls: ")


def test_pid_1s_program_is_the_containers_busybox_and_cannot_be_written(minimal: Machine) -> None:
    # one inode: the host's busybox (pid 1's program), getty's and scratch's lower copy
    inodes = minimal.shell(
        "stat -L -c %i /proc/1/exe /containers/services/getty/rootfs/bin/busybox"
        " /containers/services/scratch/lower/bin/busybox"
    ).split()
    assert len(inodes) == 3 and len(set(inodes)) == 1, inodes
    # the kernel refuses writes to a running program: nothing changes the shared file
    refused = minimal.shell("echo x >>/bin/busybox 2>&1; echo rc=$?")
    assert "Text file busy" in refused and "rc=1" in refused, refused
    # /sbin/modprobe is not in the image: rcS made it with the applets' links
    assert minimal.shell("readlink /sbin/modprobe").strip() == "/bin/busybox"


def test_console_shell_is_root_in_the_machine_namespaces(minimal: Machine) -> None:
    assert minimal.shell("readlink /proc/1/exe").strip() == "/bin/busybox"
    assert minimal.shell("ls /containers/onboot").split() == [
        "000-first",
        "001-second",
        "002-third",
    ]


def test_acpi_power_button_runs_onshutdown_then_powers_off(minimal: Machine) -> None:
    start = len(minimal.console)
    minimal.qmp("system_powerdown")
    assert minimal.wait_exit(timeout=90) == 0
    tail = minimal.console[start:]
    order = [
        "ACPI power button pressed",
        "shutdown: services stopped",
        "ONSHUTDOWN-MARK goodbye",
        "onshutdown 000-goodbye: exited with status 0",
        "reboot: Power down",
    ]
    positions = [tail.find(step) for step in order]
    assert -1 not in positions, f"missing shutdown steps in:\n{tail}"
    assert positions == sorted(positions), tail
    assert "Kernel panic" not in minimal.console
