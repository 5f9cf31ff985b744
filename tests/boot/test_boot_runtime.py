"""runtime.json at boot, as LinuxKit's init applies it: an onboot container's network
namespace bound at /run/netns/lab outlives it, with one end of a veth pair inside; a service
joins that namespace by path and gets a veth end of its own (the peers stay in the machine's
namespace) and a tmpfs mounted at a destination relative to its root. Two onboot entries
sharing a name run in order from their own directories."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import boot_rig as rig
import pytest
from boot_machine import Machine

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot-runtime"), pytest.mark.timeout(300)]

SPECS = [rig.REPO / "examples/minimal.yml", rig.REPO / "tests/boot/specs/runtime-test.yml"]


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    out: Path = tmp_path_factory.mktemp("runtime")
    kernel, initrd, _digest = rig.build_with_provision(SPECS, out, "runtime")
    booted = Machine(kernel, initrd, out)
    try:
        booted.wait_for(r"LAB-READY", timeout=180)
        booted.wait_for(r"# \x1b\[6n", timeout=60)
        yield booted
    finally:
        booted.kill()


def test_onboot_entries_sharing_a_name_run_in_order(machine: Machine) -> None:
    assert re.findall(r"^DUP-MARK (\w+)\r?$", machine.console, re.M) == ["one", "two"]
    assert machine.shell("ls /containers/onboot").split() == ["000-mark", "001-netns", "002-mark"]
    assert "onboot 002-mark: exited with status 0" in machine.console


def test_the_bound_namespace_outlives_the_onboot_container(machine: Machine) -> None:
    assert re.search(r"^nsfs /run/netns/lab nsfs ", machine.shell("cat /proc/mounts"), re.M)
    inside = machine.shell("nsenter --net=/run/netns/lab ip -o link")
    names = re.findall(r"^\d+: ([^:@]+)", inside, re.M)
    assert sorted(names) == ["lab0", "lo", "svc0"], inside
    assert re.search(r"^\d+: lab0@\S+ <[^>]*\bUP\b", inside, re.M), (
        inside
    )  # set up by the onboot container
    host = re.findall(r"^\d+: ([^:@]+)", machine.shell("ip -o link"), re.M)
    assert "lab0-host" in host and "svc0-host" in host and "lab0" not in host and "svc0" not in host


def test_the_service_sees_its_veth_and_its_relative_mount(machine: Machine) -> None:
    links = re.findall(r"^LAB-LINK \d+: ([^:@]+)", machine.console, re.M)
    assert sorted(links) == ["lab0", "lo", "svc0"], machine.console
    assert re.search(r"^LAB-MOUNT tmpfs /scratch-space tmpfs ", machine.console, re.M)
    assert machine.shell("cat /run/service/lab/supervise/stat").strip() == "run"
    assert "lab" in machine.shell("crun --root /run/runc list -q").split()
