"""BIOS boot: syslinux installed into a FAT filesystem image, and the MBR boot code."""

from __future__ import annotations

import os
from pathlib import Path

from provision.builders.base import check_cmdline, clamp_fat_epoch, tool_env
from provision.runner import run

SYSLINUX_MBR = "/usr/lib/syslinux/mbr/mbr.bin"
SYSLINUX_GPTMBR = "/usr/lib/syslinux/mbr/gptmbr.bin"
ISOLINUX_BIN = "/usr/lib/ISOLINUX/isolinux.bin"
ISOHYBRID_MBR = "/usr/lib/ISOLINUX/isohdpfx.bin"
LDLINUX_C32 = "/usr/lib/syslinux/modules/bios/ldlinux.c32"
SYSLINUX_DIR = "/boot/syslinux"
KERNEL_PATH = "/boot/kernel"
INITRD_PATH = "/boot/initrd.img"
MBR_CODE_BYTES = 440  # boot code before the disk signature and partition table


def write_syslinux_config(
    cmdline: str, *, kernel: str = KERNEL_PATH, initrd: str = INITRD_PATH
) -> bytes:
    """A syslinux/isolinux configuration that boots at once, passing ``cmdline`` verbatim."""
    return (
        "DEFAULT provision\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "SERIAL 0 115200\n"
        "LABEL provision\n"
        f"  KERNEL {kernel}\n"
        f"  INITRD {initrd}\n"
        f"  APPEND {check_cmdline(cmdline)}\n"
    ).encode()


def write_syslinux_boot(fat_image: Path, epoch: int) -> None:
    """Install syslinux's boot sector and ldlinux into a FAT image (file, no loop device)."""
    run(
        ["syslinux", "--install", "--directory", SYSLINUX_DIR, fat_image],
        env=tool_env(clamp_fat_epoch(epoch)),
    )


def write_mbr_code(disk_fd: int, *, gpt: bool) -> None:
    """Put syslinux's MBR boot code (which chains the active / legacy-bootable partition) into
    the first 440 bytes, leaving the disk signature and the partition table alone."""
    code = Path(SYSLINUX_GPTMBR if gpt else SYSLINUX_MBR).read_bytes()[:MBR_CODE_BYTES]
    os.pwrite(disk_fd, code, 0)
