"""Boot tests of the launcher under TCG: a tiny busybox initrd and the host's cloud kernel."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from pathlib import Path

import pytest
from qemu_testkit import MARKER, dead_pid, free_port, provision

from provision.builders.base import BootInputs, FormatOptions
from provision.builders.formats import FORMATS
from provision.providers.qemu.state import CONFIG_FILE, PID_FILE, pid_is_vm, write_json_atomic
from provision.providers.qemu.vm import attach_vm, list_vms, wait_serial
from provision.runner import run

pytestmark = [pytest.mark.boot, pytest.mark.timeout(120)]


def test_foreground_run_exits_zero_on_poweroff_over_stale_state(
    test_artifact: Path, state_root: Path
) -> None:
    # A VM of the same name left behind by a crash: its QEMU is gone.
    stale = state_root / "vms" / "tiny"
    stale.mkdir(parents=True)
    write_json_atomic(stale / CONFIG_FILE, {"name": "tiny", "tags": {"old": "yes"}})
    (stale / PID_FILE).write_text(f"{dead_pid()}\n")
    assert [(vm.name, vm.state, vm.pid) for vm in list_vms(state_root)] == [
        ("tiny", "stopped", None)
    ]

    started = time.monotonic()
    result = provision(
        state_root, "run", "qemu", str(test_artifact), "--accel", "tcg", "--mem", "256",
        "--cmdline", "test.poweroff=early",
    )  # fmt: skip
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    assert MARKER in result.stdout
    cmdline = next(line for line in result.stdout.splitlines() if line.startswith("CMDLINE:"))
    # The build's cmdline file, the serial console, then --cmdline.
    assert "panic=-1 quiet console=ttyS0 test.poweroff=early" in cmdline
    assert list_vms(state_root) == []  # the foreground VM's state is gone once it ended
    print(f"foreground boot to poweroff: {elapsed:.1f}s")


def test_tar_kernel_initrd_boots_unpacked(
    test_artifact: Path, state_root: Path, tmp_path: Path
) -> None:
    """The tar-kernel-initrd output boots as it is: run qemu unpacks it into the VM's state."""
    inputs = BootInputs(
        kernel=Path(f"{test_artifact}-kernel"), initrd=Path(f"{test_artifact}-initrd.img"),
        cmdline="panic=-1 quiet", rootfs_tar=None, digest="sha256:" + "0" * 64,
        source_date_epoch=0, name="packed",
    )  # fmt: skip
    (archive,) = FORMATS["tar-kernel-initrd"].write(inputs, tmp_path, FormatOptions())
    result = provision(
        state_root, "run", "qemu", str(archive), "--accel", "tcg", "--mem", "256",
        "--cmdline", "test.poweroff=early",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert MARKER in result.stdout
    cmdline = next(line for line in result.stdout.splitlines() if line.startswith("CMDLINE:"))
    assert "panic=-1 quiet console=ttyS0 test.poweroff=early" in cmdline
    assert list_vms(state_root) == []  # the unpacked files went with the VM's state


def test_detached_vm_publishes_gets_data_and_stops_gracefully(
    test_artifact: Path, state_root: Path, tmp_path: Path
) -> None:
    port = free_port()
    extra = tmp_path / "extra.qcow2"
    started = time.monotonic()
    result = provision(
        state_root, "run", "qemu", str(test_artifact), "--name", "web1", "--accel", "tcg",
        "--mem", "256", "--detach", "--isolated", "--publish", f"{port}:7080",
        "--tag", "group=g1", "--tag", "config.hash=abc", "--data", "greeting: hello-cidata",
        "--disk", f"{extra},size=8M",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "web1 started" in result.stdout

    # The CLI has returned; the VM keeps running in the background.
    ps = json.loads(provision(state_root, "ps", "--json").stdout)
    assert [(vm["name"], vm["state"], vm["tags"]) for vm in ps] == [
        ("web1", "running", {"group": "g1", "config.hash": "abc"})
    ]
    assert ps[0]["published"] == [{"host": port, "guest": 7080, "proto": "tcp"}]
    assert ps[0]["accel"] == "tcg"
    assert provision(state_root, "ps", "--tag", "group=other").stdout.count("\n") == 1

    handle = attach_vm("web1", state_root)
    wait_serial(handle, "GUEST-READY", timeout=60)
    ready = time.monotonic() - started
    log = handle.serial_log.read_text(errors="replace")
    assert "USER-DATA-BEGIN\ngreeting: hello-cidata" in log.replace("\r\n", "\n")
    assert "EXTRA-DISK: vda 16384 sectors" in log  # 8 MiB created by --disk ...,size=8M

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()
    assert body == b"hello-from-guest\n"

    again = provision(state_root, "run", "qemu", str(test_artifact), "--name", "web1",
                      "--accel", "tcg", "--detach")  # fmt: skip
    assert again.returncode == 2
    assert "already running" in again.stderr

    stop_started = time.monotonic()
    stopped = provision(state_root, "stop", "web1", "--timeout", "30")
    stop_seconds = time.monotonic() - stop_started
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "web1: powered-off"  # ACPI power button, not a kill
    assert handle.pid is not None
    assert not pid_is_vm(handle.pid, handle.state_dir)
    assert json.loads(provision(state_root, "ps", "--json").stdout) == []
    print(f"detached start to ready: {ready:.1f}s, graceful stop: {stop_seconds:.1f}s")


def test_uefi_direct_kernel_boot_reads_cidata_on_q35(
    test_artifact: Path, state_root: Path, tmp_path: Path
) -> None:
    user_data = tmp_path / "user-data.yml"
    user_data.write_text("efi-user-data: from a file")
    result = provision(
        state_root, "run", "qemu", str(test_artifact), "--accel", "tcg", "--mem", "256",
        "--uefi", "--data-file", str(user_data), "--cmdline", "test.poweroff=late",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert MARKER in result.stdout
    assert "USER-DATA-BEGIN\nefi-user-data: from a file" in result.stdout.replace("\r\n", "\n")


@pytest.mark.parametrize("image", ["iso", "qcow2"])
def test_iso_boots_as_cdrom_and_qcow2_as_disk_left_unchanged(
    hybrid_iso: Path, state_root: Path, tmp_path: Path, image: str
) -> None:
    artifact = hybrid_iso
    if image == "qcow2":
        artifact = tmp_path / "tiny.qcow2"
        run(["qemu-img", "convert", "-O", "qcow2", hybrid_iso, artifact])
    before = hashlib.sha256(artifact.read_bytes()).hexdigest()
    result = provision(state_root, "run", "qemu", str(artifact), "--accel", "tcg", "--mem", "256")
    assert result.returncode == 0, result.stderr
    assert MARKER in result.stdout
    assert "BOOT_IMAGE=/kernel" in result.stdout  # booted by isolinux, not -kernel
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == before  # snapshot=on
