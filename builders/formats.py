"""The output formats: their names (the YAML / CLI spellings), file names, the one registry of
writers, and how QEMU boots each of them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from provision.builders.base import FormatWriter
from provision.builders.cloud import GcpWriter
from provision.builders.disk import QemuImgWriter, RawDiskWriter
from provision.builders.iso import IsoBiosWriter, IsoEfiInitrdWriter, IsoEfiWriter
from provision.builders.kernel_initrd import KERNEL_INITRD, TAR, TAR_KERNEL_INITRD
from provision.builders.rootfs_image import KernelRootfsWriter
from provision.builders.vhd import VhdWriter
from provision.builders.vmdk import VmdkWriter
from provision.errors import UsageError


class OutputFormat(enum.StrEnum):
    KERNEL_INITRD = "kernel+initrd"
    TAR_KERNEL_INITRD = "tar-kernel-initrd"
    TAR = "tar"
    KERNEL_SQUASHFS = "kernel+squashfs"
    KERNEL_EROFS = "kernel+erofs"
    ISO_BIOS = "iso-bios"
    ISO_EFI = "iso-efi"
    ISO_EFI_INITRD = "iso-efi-initrd"
    RAW_BIOS = "raw-bios"
    RAW_EFI = "raw-efi"
    QCOW2_BIOS = "qcow2-bios"
    QCOW2_EFI = "qcow2-efi"
    VHD = "vhd"
    DYNAMIC_VHD = "dynamic-vhd"
    VMDK = "vmdk"
    GCP = "gcp"
    AWS = "aws"

    def extension(self) -> str:
        """What follows the image name in the (main) output file's name."""
        return _EXTENSIONS[self]


_EXTENSIONS: dict[OutputFormat, str] = {
    OutputFormat.KERNEL_INITRD: "-initrd.img",
    OutputFormat.TAR_KERNEL_INITRD: "-initrd.tar",
    OutputFormat.TAR: ".tar",
    OutputFormat.KERNEL_SQUASHFS: "-squashfs.img",
    OutputFormat.KERNEL_EROFS: "-erofs.img",
    OutputFormat.ISO_BIOS: ".iso",
    OutputFormat.ISO_EFI: "-efi.iso",
    OutputFormat.ISO_EFI_INITRD: "-efi-initrd.iso",
    OutputFormat.RAW_BIOS: "-bios.img",
    OutputFormat.RAW_EFI: "-efi.img",
    OutputFormat.QCOW2_BIOS: ".qcow2",
    OutputFormat.QCOW2_EFI: "-efi.qcow2",
    OutputFormat.VHD: ".vhd",
    OutputFormat.DYNAMIC_VHD: "-dynamic.vhd",
    OutputFormat.VMDK: ".vmdk",
    OutputFormat.GCP: ".img.tar.gz",
    OutputFormat.AWS: ".raw",
}

F = OutputFormat

FORMATS: dict[str, FormatWriter] = {
    F.KERNEL_INITRD: KERNEL_INITRD,
    F.TAR_KERNEL_INITRD: TAR_KERNEL_INITRD,
    F.TAR: TAR,
    F.KERNEL_SQUASHFS: KernelRootfsWriter(F.KERNEL_SQUASHFS, "squashfs"),
    F.KERNEL_EROFS: KernelRootfsWriter(F.KERNEL_EROFS, "erofs"),
    F.ISO_BIOS: IsoBiosWriter(F.ISO_BIOS),
    F.ISO_EFI: IsoEfiWriter(F.ISO_EFI),
    F.ISO_EFI_INITRD: IsoEfiInitrdWriter(F.ISO_EFI_INITRD),
    F.RAW_BIOS: RawDiskWriter(F.RAW_BIOS, "bios"),
    F.RAW_EFI: RawDiskWriter(F.RAW_EFI, "efi"),
    F.QCOW2_BIOS: QemuImgWriter(F.QCOW2_BIOS, "bios", "qcow2"),
    F.QCOW2_EFI: QemuImgWriter(F.QCOW2_EFI, "efi", "qcow2"),
    F.VHD: VhdWriter(F.VHD, dynamic=False),
    F.DYNAMIC_VHD: VhdWriter(F.DYNAMIC_VHD, dynamic=True),
    F.VMDK: VmdkWriter(F.VMDK),
    F.GCP: GcpWriter(F.GCP),
    F.AWS: RawDiskWriter(F.AWS, "hybrid"),
}


def parse_format(name: str) -> OutputFormat:
    """The format named ``name`` (YAML / CLI spelling), or a UsageError listing them all."""
    try:
        return OutputFormat(name)
    except ValueError:
        known = ", ".join(f.value for f in OutputFormat)
        raise UsageError(f"unknown output format {name!r}", hint=f"formats: {known}") from None


def writer_for(name: str) -> FormatWriter:
    """The registered writer of format ``name``."""
    fmt = parse_format(name)
    try:
        return FORMATS[fmt]
    except KeyError:
        raise UsageError(f"no writer is registered for output format {fmt.value!r}") from None


@dataclass(frozen=True)
class BootMethod:
    """How QEMU boots a format: as a CD-ROM, a disk, or the kernel directly."""

    kind: Literal["cdrom", "disk", "kernel"]
    firmware: Literal["bios", "efi"]
    disk_format: Literal["raw", "qcow2", "vpc", "vmdk"] = "raw"


_BOOT: dict[OutputFormat, BootMethod] = {
    F.KERNEL_INITRD: BootMethod("kernel", "bios"),
    F.TAR_KERNEL_INITRD: BootMethod("kernel", "bios"),
    F.KERNEL_SQUASHFS: BootMethod("kernel", "bios"),
    F.KERNEL_EROFS: BootMethod("kernel", "bios"),
    F.ISO_BIOS: BootMethod("cdrom", "bios"),
    F.ISO_EFI: BootMethod("cdrom", "efi"),
    F.ISO_EFI_INITRD: BootMethod("cdrom", "efi"),
    F.RAW_BIOS: BootMethod("disk", "bios", "raw"),
    F.RAW_EFI: BootMethod("disk", "efi", "raw"),
    F.QCOW2_BIOS: BootMethod("disk", "bios", "qcow2"),
    F.QCOW2_EFI: BootMethod("disk", "efi", "qcow2"),
    # vhd, vmdk, gcp, aws carry a hybrid disk: they also boot with firmware="efi".
    F.VHD: BootMethod("disk", "bios", "vpc"),
    F.DYNAMIC_VHD: BootMethod("disk", "bios", "vpc"),
    F.VMDK: BootMethod("disk", "bios", "vmdk"),
    F.GCP: BootMethod("disk", "bios", "raw"),  # after unpacking disk.raw from the tarball
    F.AWS: BootMethod("disk", "bios", "raw"),
}


def boot_method(fmt: OutputFormat | str) -> BootMethod:
    """How ``provision run qemu`` boots an artifact of format ``fmt``. ``tar`` does not boot."""
    fmt = parse_format(str(fmt))
    try:
        return _BOOT[fmt]
    except KeyError:
        raise UsageError(f"output format {fmt.value!r} is not bootable") from None


HYBRID_FORMATS = frozenset({F.VHD, F.DYNAMIC_VHD, F.VMDK, F.GCP, F.AWS})
