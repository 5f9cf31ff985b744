"""EFI boot: systemd-boot with a loader entry, or a grub-mkimage'd BOOTX64.EFI with an
embedded configuration (for ISOs whose kernel lives in the ISO 9660 tree)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from provision.builders.base import check_cmdline, tool_env
from provision.builders.bios import INITRD_PATH, KERNEL_PATH
from provision.runner import run

SYSTEMD_BOOT = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
GRUB_EFI_DIR = "/usr/lib/grub/x86_64-efi"
EFI_BOOT_PATH = "/EFI/BOOT/BOOTX64.EFI"
GRUB_MODULES = (
    "part_gpt", "part_msdos", "iso9660", "fat", "search", "search_fs_file", "linux", "boot",
    "echo", "serial", "terminal",
)


def write_systemd_boot_files(kernel: Path, initrd: Path, cmdline: str) -> dict[str, Path | bytes]:
    """The files of an ESP that boots ``kernel`` with ``initrd`` and ``cmdline`` at once."""
    entry = (
        "title provision\n"
        f"linux {KERNEL_PATH}\n"
        f"initrd {INITRD_PATH}\n"
        f"options {check_cmdline(cmdline)}\n"
    ).encode()
    loader = b"default provision.conf\ntimeout 0\neditor no\nrandom-seed-mode off\n"
    return {
        EFI_BOOT_PATH: Path(SYSTEMD_BOOT),
        "/loader/loader.conf": loader,
        "/loader/entries/provision.conf": entry,
        KERNEL_PATH: kernel,
        INITRD_PATH: initrd,
    }


def quote_grub(word: str) -> str:
    """Quote one word for GRUB's shell-like script language."""
    return "'" + word.replace("'", "'\\''") + "'"


def write_grub_efi(dest: Path, *, tag_file: str, cmdline: str, epoch: int) -> None:
    """A standalone BOOTX64.EFI whose embedded script finds the device holding ``tag_file``
    (unique to this image) and boots the kernel and initrd from there."""
    words = check_cmdline(cmdline).split()
    script = (
        "set timeout=0\n"
        f"search --no-floppy --set=root --file {tag_file}\n"
        f"linux {KERNEL_PATH} {' '.join(quote_grub(w) for w in words)}\n"
        f"initrd {INITRD_PATH}\n"
        "boot\n"
    )
    with tempfile.TemporaryDirectory(prefix="grub-") as scratch:
        config = Path(scratch) / "embedded.cfg"
        config.write_text(script)
        run(
            [
                "grub-mkimage", "-O", "x86_64-efi", "-d", GRUB_EFI_DIR, "-p", "/EFI/BOOT",
                "-c", config, "-o", dest, *GRUB_MODULES,
            ],
            env=tool_env(epoch),
        )
