"""Every bootable format boots under QEMU (TCG) to the initrd's marker, and the kernel sees the
command line it was given. BIOS formats on SeaBIOS, EFI ones on OVMF; the hybrid disks of the
cloud formats on both."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from formats_testkit import CMDLINE, MARKER, ROOTFS_MARKER, Built, format_boot_method, qemu_boot

from provision.builders.base import BootInputs
from provision.builders.formats import boot_method
from provision.providers.qemu.vm import VMConfig, start_vm, stop_vm, wait_serial

pytestmark = pytest.mark.boot

IMAGE_BOOTS = [
    "iso-bios",
    "iso-efi",
    "iso-efi-initrd",
    "raw-bios",
    "raw-efi",
    "qcow2-bios",
    "qcow2-efi",
    "vhd",
    "dynamic-vhd",
    "vmdk",
    "aws",
]


def assert_booted(console: str) -> None:
    assert MARKER in console, console[-3000:]
    seen = [line for line in console.splitlines() if line.startswith("CMDLINE=")]
    assert seen, console[-3000:]
    # Every word given is passed on verbatim (loaders may add BOOT_IMAGE= / initrd=).
    words = seen[0].removeprefix("CMDLINE=").split()
    for word in CMDLINE.split():
        assert word in words, f"{word!r} missing from the kernel command line {seen[0]!r}"


@pytest.mark.parametrize("fmt", IMAGE_BOOTS)
def test_format_boots_to_marker_with_cmdline(
    fmt: str, first_build: dict[str, Built], tmp_path: Path
) -> None:
    kind, firmware, disk_format = format_boot_method(fmt)
    (image,) = first_build[fmt].files
    console, _ = qemu_boot(
        tmp_path, kind=kind, firmware=firmware, image=image, disk_format=disk_format
    )
    assert_booted(console)


@pytest.mark.parametrize("fmt", ["vmdk", "gcp"])
def test_cloud_disks_also_boot_on_efi(
    fmt: str, first_build: dict[str, Built], tmp_path: Path
) -> None:
    (artifact,) = first_build[fmt].files
    disk_format = "vmdk"
    if fmt == "gcp":
        with tarfile.open(artifact) as tar:
            member = tar.getmember("disk.raw")
            assert member.isreg()  # Debian 12's Python (3.11.2) has no extraction filters
            tar.extract(member, tmp_path)
        artifact, disk_format = tmp_path / "disk.raw", "raw"
    console, _ = qemu_boot(
        tmp_path, kind="disk", firmware="efi", image=artifact, disk_format=disk_format
    )
    assert_booted(console)


@pytest.mark.parametrize(
    ("fmt", "filesystem"), [("kernel+squashfs", "squashfs"), ("kernel+erofs", "erofs")]
)
def test_kernel_mounts_rootfs_image(
    fmt: str,
    filesystem: str,
    first_build: dict[str, Built],
    boot_inputs: BootInputs,
    tmp_path: Path,
) -> None:
    kernel, image, cmdline, _loader = first_build[fmt].files
    console, _ = qemu_boot(
        tmp_path,
        kind="kernel",
        firmware="bios",
        image=image,
        kernel=kernel,
        initrd=boot_inputs.initrd,
        append=cmdline.read_text().strip() + f" provision.rootfs={filesystem}",
    )
    assert_booted(console)
    assert f"ROOTFS={ROOTFS_MARKER}" in console, console[-3000:]


@pytest.mark.parametrize("fmt", ["gcp", "tar-kernel-initrd"])
def test_the_launcher_boots_archives_unpacked(
    fmt: str, first_build: dict[str, Built], tmp_path: Path
) -> None:
    """`provision run qemu` takes the gcp tarball and the tar-kernel-initrd archive as they are."""
    (archive,) = first_build[fmt].files
    state = tmp_path / "state"
    handle = start_vm(
        VMConfig(name="packed", artifact=archive, accel="tcg", mem_mib=256),
        state_root=state,
        detach=True,
    )
    try:
        wait_serial(handle, "CMDLINE=.*", timeout=150)
        member = handle.state_dir / boot_method(fmt).unpack[0]
        assert member.is_file()
        if fmt == "gcp":  # unpacked sparse: the disk's empty space stays holes
            assert member.stat().st_blocks * 512 < member.stat().st_size
        console = handle.serial_log.read_bytes().decode(errors="replace")
    finally:
        stop_vm("packed", state, timeout=0)
    assert_booted(console)
