"""EFI boot: systemd-boot with a loader entry, or a unified kernel image (systemd's EFI stub
carrying kernel, initrd and command line). Both pass the command line to the kernel verbatim
(GRUB would backslash-escape quotes in it)."""

from __future__ import annotations

import struct
from pathlib import Path

from provision.builders.base import MIB, check_cmdline, round_up, tool_env
from provision.builders.bios import INITRD_PATH, KERNEL_PATH
from provision.errors import ProvisionError
from provision.runner import run

SYSTEMD_BOOT = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
SYSTEMD_STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
EFI_BOOT_PATH = "/EFI/BOOT/BOOTX64.EFI"


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


def write_uki(
    dest: Path, *, kernel: Path, initrd: Path, cmdline: str, epoch: int, scratch: Path
) -> None:
    """A unified kernel image: systemd's EFI stub with the kernel, initrd and command line
    (verbatim, no bootloader quoting) as PE sections, by objcopy. objcopy stamps the PE header
    with the clock; the timestamp is set to ``epoch`` and the PE checksum recomputed."""
    (scratch / "cmdline").write_text(check_cmdline(cmdline))
    (scratch / "os-release").write_text('ID=provision\nNAME="provision"\n')
    linux_vma = 0x2000000
    initrd_vma = round_up(linux_vma + kernel.stat().st_size, MIB)
    sections = [
        (".osrel", scratch / "os-release", 0x20000),
        (".cmdline", scratch / "cmdline", 0x30000),
        (".linux", kernel, linux_vma),
        (".initrd", initrd, initrd_vma),
    ]
    argv: list[str | Path] = ["objcopy"]
    for name, source, vma in sections:
        argv += ["--add-section", f"{name}={source}", "--change-section-vma", f"{name}={vma:#x}"]
    run([*argv, SYSTEMD_STUB, dest], env=tool_env(epoch))
    write_pe_timestamp(dest, epoch)


def pe_checksum(data: bytes, checksum_offset: int) -> int:
    """The PE image checksum (16-bit one's-complement-style sum plus the file length)."""
    padded = data + b"\0" * (len(data) % 2)
    words = memoryview(padded).cast("H")
    total = sum(words) - words[checksum_offset // 2] - words[checksum_offset // 2 + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(data)) & 0xFFFFFFFF


def write_pe_timestamp(path: Path, epoch: int) -> None:
    """Set a PE file's COFF timestamp to ``epoch`` and recompute its checksum, in place."""
    data = bytearray(path.read_bytes())
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe : pe + 4] != b"PE\0\0":
        raise ProvisionError(f"{path} is not a PE image")
    struct.pack_into("<I", data, pe + 8, epoch & 0xFFFFFFFF)
    checksum_offset = pe + 24 + 64
    struct.pack_into("<I", data, checksum_offset, 0)
    struct.pack_into("<I", data, checksum_offset, pe_checksum(bytes(data), checksum_offset))
    path.write_bytes(data)
