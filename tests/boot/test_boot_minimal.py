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
    assert minimal.shell("runc list -q").split() == ["getty"]
    supervised = minimal.shell("od -An -tu1 -j12 -N4 /run/service/getty/supervise/status").split()
    pid = sum(int(b) << (8 * i) for i, b in enumerate(supervised))
    assert minimal.shell(f"readlink /proc/{pid}/exe").strip() == "/usr/sbin/runc"
    # getty is writable: its lower/ is overlaid with a tmpfs
    assert " /containers/services/getty/rootfs overlay " in minimal.shell("cat /proc/mounts")
    assert minimal.shell("hostname").strip() == "provision"


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
