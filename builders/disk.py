"""Bootable disks written to plain files: partition table by sfdisk, FAT boot partition by
dosfstools + mtools, syslinux or systemd-boot, an optional ext4 data partition. No root, no
loop device, no mount.

Layouts (all partitions start on MiB boundaries, the boot partition at 1 MiB):

- ``bios``:   MBR, partition 1 FAT (type 0x0e/0x0c, active) with syslinux; syslinux mbr.bin.
- ``efi``:    GPT, partition 1 EFI System Partition with systemd-boot.
- ``hybrid``: MBR, partition 1 type 0xef (ESP), active, carrying both syslinux and systemd-boot:
              it boots on SeaBIOS and on OVMF (used for vhd, vmdk, gcp and aws, whose clouds
              offer either firmware).

Persistent data partition (``FormatOptions.data_size``): partition 2, ext4 labelled
``provision-data`` (GPT partition name ``provision-data``, type Linux filesystem; MBR type
0x83). init finds it by that filesystem label. Re-imaging a machine with
:func:`write_reimage` rewrites only the boot code and the boot partition, so the data
partition (and the partition table) survive. :func:`write_install` is the whole rule a
machine's local disk follows (a blank disk gets the whole image, a disk of this layout is
re-imaged, anything else is left alone); pkg/init's ``install-disk`` applies the same rule in
the machine when it network-boots with ``provision.install=URL``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Literal

from provision.builders import bios, efi
from provision.builders.base import (
    BOOT_FILES_NEEDED,
    MIB,
    SECTOR,
    BootInput,
    BootInputs,
    BootMethod,
    DiskFormat,
    FormatOptions,
    OneFile,
    check_cmdline,
    copy_sparse,
    derive_hex32,
    derive_uuid,
    require_files,
    round_up,
    tool_env,
)
from provision.builders.fat import FAT_TOOLS, FatContent, size_fat_for, write_fat_image
from provision.errors import UsageError
from provision.runner import run

Firmware = Literal["bios", "efi", "hybrid"]

DATA_LABEL = "provision-data"
BOOT_LABEL = "PROVBOOT"
ESP_TYPE_GPT = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE_GPT = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BOOT_START = MIB
DISK_TOOLS = ("sfdisk", "mkfs.ext4", *FAT_TOOLS)


@dataclass(frozen=True)
class DiskLayout:
    """Where everything goes on the disk, in bytes."""

    scheme: Literal["mbr", "gpt"]
    disk_size: int
    boot_start: int
    boot_size: int
    data_size: int  # 0: no data partition

    @property
    def data_start(self) -> int:
        return self.boot_start + self.boot_size


def plan_layout(
    boot_needed: int, options: FormatOptions, scheme: Literal["mbr", "gpt"]
) -> DiskLayout:
    """Size the partitions: the boot partition fits its content (or ``options.boot_size``),
    the data partition takes ``options.data_size`` or the rest of an explicit ``size``."""
    boot_size = round_up(options.boot_size, MIB) if options.boot_size else boot_needed
    if boot_size < boot_needed:
        raise UsageError(
            f"the boot partition needs {boot_needed // MIB} MiB, boot size is {boot_size // MIB} MiB",
            hint="raise the boot partition size or leave it unset",
        )
    tail = MIB if scheme == "gpt" else 0  # room for the backup GPT
    data_size = round_up(options.data_size, MIB) if options.data_size else 0
    minimum = BOOT_START + boot_size + data_size + tail
    if options.size is None:
        return DiskLayout(scheme, minimum, BOOT_START, boot_size, data_size)
    disk_size = round_up(options.size, MIB)
    if disk_size < minimum:
        raise UsageError(
            f"a disk of {disk_size // MIB} MiB cannot hold this image: it needs {minimum // MIB} MiB",
            hint=f"use a size of at least {minimum // MIB}M",
        )
    if data_size:
        data_size = disk_size - tail - BOOT_START - boot_size
    return DiskLayout(scheme, disk_size, BOOT_START, boot_size, data_size)


def write_partition_table(disk: Path, layout: DiskLayout, firmware: Firmware, digest: str) -> None:
    """Write an MBR or GPT with identifiers derived from ``digest`` (sfdisk, on a file)."""
    start, size = layout.boot_start // SECTOR, layout.boot_size // SECTOR
    if layout.scheme == "gpt":
        lines = [
            "label: gpt",
            f"label-id: {derive_uuid(digest, 'gpt-disk')}",
            "unit: sectors",
            f"first-lba: {start}",
            f"start={start}, size={size}, type={ESP_TYPE_GPT}, "
            f'uuid={derive_uuid(digest, "gpt-boot")}, name="EFI System"',
        ]
        if layout.data_size:
            lines.append(
                f"start={layout.data_start // SECTOR}, size={layout.data_size // SECTOR}, "
                f'type={LINUX_TYPE_GPT}, uuid={derive_uuid(digest, "gpt-data")}, name="{DATA_LABEL}"'
            )
    else:
        fat_type = "c" if layout.boot_size >= 512 * MIB else "e"  # FAT32 / FAT16, LBA
        boot_type = "ef" if firmware == "hybrid" else fat_type
        lines = [
            "label: dos",
            f"label-id: 0x{derive_hex32(digest, 'mbr-disk')}",
            "unit: sectors",
            f"start={start}, size={size}, type={boot_type}, bootable",
        ]
        if layout.data_size:
            lines.append(
                f"start={layout.data_start // SECTOR}, size={layout.data_size // SECTOR}, type=83"
            )
    script = "\n".join(lines) + "\n"
    run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "-q", disk],
        input=script.encode(),
        env=tool_env(0),
    )


def write_data_partition(disk: Path, layout: DiskLayout, digest: str, epoch: int) -> None:
    """Format the data partition as ext4 in place (mkfs.ext4 at an offset into the file)."""
    fs_uuid = str(derive_uuid(digest, "data-fs"))
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            DATA_LABEL,
            "-U",
            fs_uuid,
            "-m",
            "0",
            "-E",
            f"offset={layout.data_start},root_owner=0:0,hash_seed={fs_uuid},nodiscard",
            disk,
            f"{layout.data_size // 1024}k",
        ],
        env=tool_env(epoch),
    )


def assemble_boot_files(inputs: BootInputs, firmware: Firmware) -> FatContent:
    """The files of the boot partition for ``firmware``."""
    files: dict[str, Path | bytes] = {}
    kernel, initrd = inputs.file(BootInput.KERNEL), inputs.file(BootInput.INITRD)
    if firmware in ("efi", "hybrid"):
        files.update(efi.write_systemd_boot_files(kernel, initrd, inputs.cmdline))
    if firmware in ("bios", "hybrid"):
        files[bios.KERNEL_PATH] = kernel
        files[bios.INITRD_PATH] = initrd
        files[f"{bios.SYSLINUX_DIR}/syslinux.cfg"] = bios.write_syslinux_config(inputs.cmdline)
    return files


def disk_data_files(firmware: Firmware) -> list[str]:
    paths: list[str] = []
    if firmware in ("efi", "hybrid"):
        paths.append(efi.SYSTEMD_BOOT)
    if firmware in ("bios", "hybrid"):
        paths += [bios.SYSLINUX_MBR]
    return paths


def disk_tools(firmware: Firmware) -> tuple[str, ...]:
    return (*DISK_TOOLS, "syslinux") if firmware != "efi" else DISK_TOOLS


def write_raw_disk(
    inputs: BootInputs, dest: Path, options: FormatOptions, firmware: Firmware, *, whole: int = MIB
) -> DiskLayout:
    """Write a bootable raw disk image to ``dest`` (sparse where the disk is empty), its size a
    multiple of ``whole`` bytes (GCE takes only whole GiB disks)."""
    require_files(disk_data_files(firmware))
    check_cmdline(inputs.cmdline)
    files = assemble_boot_files(inputs, firmware)
    scheme: Literal["mbr", "gpt"] = "gpt" if firmware == "efi" else "mbr"
    layout = plan_layout(size_fat_for(files), options, scheme)
    if layout.disk_size % whole:
        layout = plan_layout(
            size_fat_for(files), replace(options, size=round_up(layout.disk_size, whole)), scheme
        )
    with tempfile.TemporaryDirectory(prefix="disk-", dir=dest.parent) as scratch:
        fat = Path(scratch) / "boot.fat"
        write_fat_image(
            fat,
            layout.boot_size,
            files,
            label=BOOT_LABEL,
            volume_id=derive_hex32(inputs.digest, "boot-fat"),
            epoch=inputs.source_date_epoch,
            hidden_sectors=layout.boot_start // SECTOR,
        )
        if firmware != "efi":
            bios.write_syslinux_boot(fat, inputs.source_date_epoch)
        with open(dest, "wb") as f:
            f.truncate(layout.disk_size)
        write_partition_table(dest, layout, firmware, inputs.digest)
        fd = os.open(dest, os.O_WRONLY)
        try:
            copy_sparse(fat, fd, layout.boot_start)
            if firmware != "efi":
                bios.write_mbr_code(fd, gpt=False)
        finally:
            os.close(fd)
    if layout.data_size:
        write_data_partition(dest, layout, inputs.digest, inputs.source_date_epoch)
    return layout


# --- re-imaging -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionEntry:
    start: int  # bytes
    size: int
    type: str
    name: str


def read_partitions(disk: Path) -> tuple[str, list[PartitionEntry]]:
    """The label type (``dos``/``gpt``) and partitions of a disk image file."""
    out = run(["sfdisk", "--json", disk]).stdout
    table = json.loads(out)["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    parts = [
        PartitionEntry(
            int(p["start"]) * sector,
            int(p["size"]) * sector,
            str(p["type"]),
            str(p.get("name", "")),
        )
        for p in table.get("partitions", [])
    ]
    return str(table["label"]), parts


def write_reimage(image: Path, target: Path) -> None:
    """Re-image ``target`` (a disk of an earlier image) with the boot code and boot partition
    of ``image``, keeping ``target``'s partition table and data partition as they are. Every
    byte of the boot partition is written (its zeros too: nothing of the old one is left)."""
    new_label, new_parts = read_partitions(image)
    old_label, old_parts = read_partitions(target)
    if not new_parts or not old_parts:
        raise UsageError("both disks need a partition table to re-image")
    new_boot, old_boot = new_parts[0], old_parts[0]
    if new_label != old_label or new_boot.start != old_boot.start or new_boot.size > old_boot.size:
        raise UsageError(
            f"the new image's boot partition ({new_label}, {new_boot.size // MIB} MiB at "
            f"{new_boot.start}) does not fit the disk's ({old_label}, {old_boot.size // MIB} MiB at "
            f"{old_boot.start})",
            hint="build the image with the same boot partition size (--boot-size) as the disk",
        )
    with open(image, "rb") as src:
        code = src.read(bios.MBR_CODE_BYTES)
    fd = os.open(target, os.O_WRONLY)
    try:
        os.pwrite(fd, code, 0)
        with open(image, "rb") as src:
            _copy_range(src, fd, new_boot.start, new_boot.size, old_boot.start)
        zero_tail = old_boot.size - new_boot.size
        for offset in range(0, zero_tail, 4 * MIB):
            block = bytes(min(4 * MIB, zero_tail - offset))
            os.pwrite(fd, block, old_boot.start + new_boot.size + offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_range(src: BinaryIO, fd: int, start: int, size: int, dest: int) -> None:
    """``size`` bytes of ``src`` from ``start`` to the open file ``fd`` at ``dest``, all of them."""
    src.seek(start)
    done = 0
    while done < size:
        block = src.read(min(size - done, 4 * MIB))
        if not block:
            raise UsageError(f"{src.name}: ends {size - done} bytes short of its partition")
        os.pwrite(fd, block, dest + done)
        done += len(block)


def has_partition_table(disk: Path) -> bool:
    """Whether ``disk`` carries an MBR or a protective MBR (the 0x55AA signature): a disk
    without one is blank, whatever else it holds."""
    with open(disk, "rb") as f:
        f.seek(510)
        return f.read(2) == b"\x55\xaa"


InstallKind = Literal["installed", "reimaged"]


def write_install(image: Path, target: Path) -> InstallKind:
    """Put ``image`` (a raw disk of provision's layout) onto the local disk ``target`` the way
    a network-booted machine does it (pkg/init's install-disk follows the same rule):

    * a blank disk (no partition table) gets the whole image, data partition included; the
      first MiB (the partition table) is written last, so an interrupted install leaves a disk
      that is still blank and is installed whole again;
    * a disk of provision's layout (the same table type, the boot partition at the same place
      and at least as big) is re-imaged (:func:`write_reimage`): boot code and boot partition
      rewritten, partition table and data partition kept;
    * anything else is refused (UsageError), nothing written: a disk holding something else
      is never overwritten (wipe it first).
    """
    if has_partition_table(target):
        write_reimage(image, target)
        return "reimaged"
    size = image.stat().st_size
    target_size = _disk_size(target)
    if target_size < size:
        raise UsageError(
            f"{target} ({target_size // MIB} MiB) is smaller than the image ({size // MIB} MiB)"
        )
    fd = os.open(target, os.O_WRONLY)
    try:
        with open(image, "rb") as src:
            _copy_range(src, fd, MIB, size - MIB, MIB)
            _copy_range(src, fd, 0, MIB, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return "installed"


def _disk_size(disk: Path) -> int:
    with open(disk, "rb") as f:
        return f.seek(0, os.SEEK_END)


# --- the writers ------------------------------------------------------------------------------


def disk_boot(firmware: Firmware, disk_format: DiskFormat = "raw") -> BootMethod:
    """How a disk written for ``firmware`` boots (a hybrid disk: on BIOS, and on EFI too)."""
    if firmware == "hybrid":
        return BootMethod("disk", "bios", disk_format, hybrid=True)
    return BootMethod("disk", firmware, disk_format)


@dataclass(frozen=True)
class RawDiskWriter(OneFile):
    """``raw-bios``, ``raw-efi`` and ``aws`` (hybrid): the raw disk itself."""

    name: str
    firmware: Firmware
    extension: str
    needs: frozenset[BootInput] = BOOT_FILES_NEEDED

    @property
    def boot(self) -> BootMethod | None:
        return disk_boot(self.firmware)

    def tools(self) -> Sequence[str]:
        return disk_tools(self.firmware)

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        out = dest / (inputs.name + self.extension)
        write_raw_disk(inputs, out, options, self.firmware)
        return [out]


@dataclass(frozen=True)
class QemuImgWriter(OneFile):
    """Formats qemu-img converts the raw disk into (qcow2; reproducible as qemu writes it)."""

    name: str
    firmware: Firmware
    qemu_format: DiskFormat
    extension: str
    qemu_options: tuple[str, ...] = ()
    needs: frozenset[BootInput] = BOOT_FILES_NEEDED

    @property
    def boot(self) -> BootMethod | None:
        return disk_boot(self.firmware, self.qemu_format)

    def tools(self) -> Sequence[str]:
        return (*disk_tools(self.firmware), "qemu-img")

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        out = dest / (inputs.name + self.extension)
        with tempfile.TemporaryDirectory(prefix="raw-", dir=dest) as scratch:
            raw = Path(scratch) / "disk.raw"
            write_raw_disk(inputs, raw, options, self.firmware)
            write_qemu_img(raw, out, self.qemu_format, self.qemu_options)
        return [out]


def write_qemu_img(raw: Path, out: Path, fmt: str, opts: Sequence[str] = ()) -> None:
    """``qemu-img convert`` a raw disk into ``fmt``."""
    argv: list[str | Path] = ["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt]
    if opts:
        argv += ["-o", ",".join(opts)]
    run([*argv, raw, out])
