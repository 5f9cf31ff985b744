"""Bootable ISO 9660 images written by xorriso: no root, reproducible.

- ``iso-bios``: isolinux (El Torito, no emulation), hybrid MBR so it also boots from a disk.
- ``iso-efi``: the El Torito EFI image (FAT) holds one file, ``EFI/BOOT/BOOTX64.EFI``, a unified
  kernel image (systemd's stub + kernel + initrd + command line, one signed-able PE).
- ``iso-efi-initrd``: the El Torito EFI image holds systemd-boot with a loader entry and the
  kernel and initrd as separate files (the initrd can be swapped without rebuilding a PE).

Both boot on firmware alone (no bootloader filesystem driver for ISO 9660 involved).

Reproducible: SOURCE_DATE_EPOCH fixes xorriso's volume dates and UUID, every file's dates are
set to it, ownership is rationalised (``-r``), the FAT image is reproducible in its own right.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.builders import bios, efi
from provision.builders.base import (
    BOOT_FILES_NEEDED,
    BootInput,
    BootInputs,
    BootMethod,
    FormatOptions,
    OneFile,
    derive_hex32,
    require_files,
    tool_env,
)
from provision.builders.fat import FAT_TOOLS, FatContent, size_fat_for, write_fat_image
from provision.runner import run

VOLUME_ID = "PROVISION"
EFI_IMAGE_PATH = "/EFI/efiboot.img"


def write_iso(
    out: Path,
    tree: Mapping[str, Path],
    boot_args: Sequence[str],
    epoch: int,
) -> None:
    """Write an ISO holding ``tree`` (ISO path -> source file) with El Torito ``boot_args``."""
    grafts = [f"{target}={source}" for target, source in sorted(tree.items())]
    run(
        [
            "xorriso",
            "-as",
            "mkisofs",
            "-quiet",
            "-o",
            out,
            "-V",
            VOLUME_ID,
            "-r",
            "-iso-level",
            "3",
            *boot_args,
            "-graft-points",
            *grafts,
            "--",
            "-alter_date_r",
            "b",
            f"@{epoch}",
            "/",
            "--",
        ],
        env=tool_env(epoch),
    )


@dataclass(frozen=True)
class IsoBiosWriter(OneFile):
    name: str = "iso-bios"
    extension: str = ".iso"
    boot: BootMethod | None = BootMethod("cdrom", "bios")
    needs: frozenset[BootInput] = BOOT_FILES_NEEDED

    def tools(self) -> Sequence[str]:
        return ("xorriso",)

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        require_files([bios.ISOLINUX_BIN, bios.ISOHYBRID_MBR, bios.LDLINUX_C32])
        out = dest / (inputs.name + self.extension)
        with tempfile.TemporaryDirectory(prefix="iso-", dir=dest) as scratch:
            config = Path(scratch) / "isolinux.cfg"
            config.write_bytes(bios.write_syslinux_config(inputs.cmdline))
            tree = {
                "/isolinux/isolinux.bin": Path(bios.ISOLINUX_BIN),
                "/isolinux/ldlinux.c32": Path(bios.LDLINUX_C32),
                "/isolinux/isolinux.cfg": config,
                bios.KERNEL_PATH: inputs.file(BootInput.KERNEL),
                bios.INITRD_PATH: inputs.file(BootInput.INITRD),
            }
            boot = [
                "-b",
                "isolinux/isolinux.bin",
                "-c",
                "isolinux/boot.cat",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "-isohybrid-mbr",
                bios.ISOHYBRID_MBR,
            ]
            write_iso(out, tree, boot, inputs.source_date_epoch)
        return [out]


def efi_boot_args() -> list[str]:
    return ["-e", EFI_IMAGE_PATH.lstrip("/"), "-no-emul-boot"]


def write_efi_iso(out: Path, esp_files: FatContent, inputs: BootInputs, scratch: Path) -> None:
    """An ISO that boots through UEFI: ``esp_files`` in a FAT image, its El Torito EFI image."""
    fat = scratch / "efiboot.img"
    write_fat_image(
        fat,
        size_fat_for(esp_files, spare=0.05),
        esp_files,
        label="EFIBOOT",
        volume_id=derive_hex32(inputs.digest, "iso-efi-fat"),
        epoch=inputs.source_date_epoch,
    )
    write_iso(out, {EFI_IMAGE_PATH: fat}, efi_boot_args(), inputs.source_date_epoch)


@dataclass(frozen=True)
class IsoEfiWriter(OneFile):
    name: str = "iso-efi"
    extension: str = "-efi.iso"
    boot: BootMethod | None = BootMethod("cdrom", "efi")
    needs: frozenset[BootInput] = BOOT_FILES_NEEDED

    def tools(self) -> Sequence[str]:
        return ("xorriso", "objcopy", *FAT_TOOLS)

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        require_files([efi.SYSTEMD_STUB])
        out = dest / (inputs.name + self.extension)
        with tempfile.TemporaryDirectory(prefix="iso-", dir=dest) as scratch:
            work = Path(scratch)
            uki = work / "BOOTX64.EFI"
            efi.write_uki(
                uki,
                kernel=inputs.file(BootInput.KERNEL),
                initrd=inputs.file(BootInput.INITRD),
                cmdline=inputs.cmdline,
                epoch=inputs.source_date_epoch,
                scratch=work,
            )
            write_efi_iso(out, {efi.EFI_BOOT_PATH: uki}, inputs, work)
        return [out]


@dataclass(frozen=True)
class IsoEfiInitrdWriter(OneFile):
    name: str = "iso-efi-initrd"
    extension: str = "-efi-initrd.iso"
    boot: BootMethod | None = BootMethod("cdrom", "efi")
    needs: frozenset[BootInput] = BOOT_FILES_NEEDED

    def tools(self) -> Sequence[str]:
        return ("xorriso", *FAT_TOOLS)

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        require_files([efi.SYSTEMD_BOOT])
        out = dest / (inputs.name + self.extension)
        with tempfile.TemporaryDirectory(prefix="iso-", dir=dest) as scratch:
            files = efi.write_systemd_boot_files(
                inputs.file(BootInput.KERNEL), inputs.file(BootInput.INITRD), inputs.cmdline
            )
            write_efi_iso(out, files, inputs, Path(scratch))
        return [out]
