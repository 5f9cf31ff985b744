"""A raw-bios disk built with ``provision build --data-size 16M`` (the real kernel and init of
`provision pkg build`) boots under QEMU (TCG) and init mounts its ``provision-data`` partition
at /var/persist before the onboot containers, saying so on the console. (The launcher boots
disks with ``snapshot=on``, so what the machine writes there is not kept: only the mount is
checked.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from formats_testkit import provision_cli, write_agent_spec

from provision.builders.disk import read_partitions
from provision.providers.qemu.vm import VMConfig, start_vm, stop_vm, wait_serial

pytestmark = [pytest.mark.boot, pytest.mark.timeout(600)]  # a cold component store: pkg build first

MOUNTED = r"provision-init: \[[0-9.]+\] data partition (/dev/vda2) \(provision-data\) mounted at /var/persist"
BOOT_TIMEOUT = 40.0


def test_data_partition_is_mounted_at_var_persist(component_store: Path, tmp_path: Path) -> None:
    spec = write_agent_spec(tmp_path / "persist.yml")
    done = provision_cli(
        "build",
        "-q",
        "-f",
        "raw-bios",
        "--data-size",
        "16M",
        "-o",
        str(tmp_path / "out"),
        str(spec),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    disk = tmp_path / "out" / "persist-bios.img"
    assert len(read_partitions(disk)[1]) == 2
    config = VMConfig(name="persist", artifact=disk, accel="tcg", mem_mib=160)
    started = time.monotonic()
    handle = start_vm(config, state_root=tmp_path / "state", detach=True)
    try:
        line = wait_serial(handle, MOUNTED, BOOT_TIMEOUT)
        seconds = time.monotonic() - started
        wait_serial(handle, "starting 2 services", BOOT_TIMEOUT)  # the order is checked below
        console = handle.serial_log.read_bytes().decode(errors="replace")
    finally:
        stop_vm("persist", tmp_path / "state", timeout=0.5)
    print(f"\ndata partition mounted {seconds:.1f}s after QEMU started: {line}")
    assert "/dev/vda2" in line
    # mounted before the onboot containers and the services start
    assert console.index("mounted at /var/persist") < console.index("starting 2 services")
