"""What every output-format writer declares, takes and promises.

A writer declares its own facts (:class:`FormatWriter`: its name, the files it writes, how a
machine boots them, which :class:`BootInput` it needs) and turns :class:`BootInputs` into those
files in a destination directory. The pipeline produces only the inputs the chosen writers
declare and hands each writer only its own (a disk format never sees the root tar, nor causes
it to be written). It checks :meth:`FormatWriter.tools` with ``provision.runner.require_tools``
before any work starts, calls :meth:`FormatWriter.write` with a temporary directory and renames
the results into place.

Reproducibility rules shared by all writers live here: identifiers (disk ids, partition GUIDs,
FAT volume ids, filesystem UUIDs) are derived from ``BootInputs.digest``; timestamps come from
``BootInputs.source_date_epoch`` (clamped to 1980 for FAT, to 2000 for VHD).
"""

from __future__ import annotations

import enum
import hashlib
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

from provision.errors import ProvisionError, ToolMissingError, UsageError

MIB = 1024 * 1024
SECTOR = 512
FAT_EPOCH_MIN = 315532800  # 1980-01-01T00:00:00Z, the first date FAT can hold
FAT_EPOCH_MAX = 4354819199  # 2107-12-31T23:59:59Z, the last one


class BootInput(enum.StrEnum):
    """What a writer can ask the pipeline for. The pipeline writes the kernel, the initrd and
    the root tar only when a chosen writer asks for them."""

    KERNEL = "kernel"
    INITRD = "initrd"  # compressed newc cpio (microcode cpio first when the spec has one)
    CMDLINE = "cmdline"
    ROOTFS_TAR = "rootfs-tar"  # uncompressed tar of the canonical root


BOOT_FILES_NEEDED = frozenset({BootInput.KERNEL, BootInput.INITRD, BootInput.CMDLINE})


@dataclass(frozen=True)
class BootInputs:
    """What the pipeline produced for the writers; a file a writer did not ask for is None."""

    kernel: Path | None
    initrd: Path | None
    cmdline: str
    rootfs_tar: Path | None
    digest: str  # sha256 of the image content; seeds every identifier
    source_date_epoch: int
    name: str

    def file(self, what: Literal[BootInput.KERNEL, BootInput.INITRD, BootInput.ROOTFS_TAR]) -> Path:
        """The path of input ``what``; ProvisionError when it was not produced (a writer that
        did not declare it in ``needs``)."""
        path = {
            BootInput.KERNEL: self.kernel,
            BootInput.INITRD: self.initrd,
            BootInput.ROOTFS_TAR: self.rootfs_tar,
        }[what]
        if path is None:
            raise ProvisionError(
                f"no {what} was produced for this writer (it must list {what} in its needs)"
            )
        return path

    def only(self, needs: frozenset[BootInput]) -> BootInputs:
        """These inputs less everything not in ``needs``."""
        return replace(
            self,
            kernel=self.kernel if BootInput.KERNEL in needs else None,
            initrd=self.initrd if BootInput.INITRD in needs else None,
            cmdline=self.cmdline if BootInput.CMDLINE in needs else "",
            rootfs_tar=self.rootfs_tar if BootInput.ROOTFS_TAR in needs else None,
        )


Firmware = Literal["bios", "efi"]
BootDevice = Literal["kernel", "cdrom", "disk"]
DiskFormat = Literal["raw", "qcow2", "vpc", "vmdk"]


@dataclass(frozen=True)
class BootMethod:
    """How a machine boots a format (and what QEMU is given).

    ``kind``: ``kernel`` (the kernel directly, ``-kernel``; no firmware involved), ``cdrom``
    or ``disk``. ``firmware``: the one it boots on by default (``bios`` for a direct kernel
    boot: QEMU's default machine); ``hybrid``: the disk carries both loaders and also boots on
    EFI. ``disk_format``: QEMU's block driver for it. ``unpack``: the output is an archive, and
    these members of it boot, unpacked first: the disk (``disk.raw`` of the gcp tarball), or
    the kernel, the initrd and the command line (tar-kernel-initrd), in that order. ``root_disk``: a direct kernel boot whose main file
    (``extension``) is the root, attached read-only as a virtio disk (kernel+squashfs).
    """

    kind: BootDevice
    firmware: Firmware = "bios"
    disk_format: DiskFormat = "raw"
    hybrid: bool = False
    unpack: tuple[str, ...] = ()
    root_disk: bool = False

    @property
    def firmwares(self) -> tuple[Firmware, ...]:
        """Every firmware it boots on (a direct kernel boot: QEMU's default only)."""
        return ("bios", "efi") if self.hybrid else (self.firmware,)

    @property
    def method(self) -> str:
        """``kernel``, ``bios``, ``efi`` or ``bios+efi`` (the docs' and --help's word)."""
        return "kernel" if self.kind == "kernel" else "+".join(self.firmwares)


@dataclass(frozen=True)
class FormatOptions:
    """How big a disk is and what it carries besides the boot partition.

    ``size``: whole disk in bytes (rounded up to a MiB); None sizes the disk to fit.
    ``boot_size``: the boot (ESP / FAT) partition in bytes; None sizes it to the content with
    room to spare. Give it explicitly when disks will be re-imaged with later, bigger kernels.
    ``data_size``: a persistent data partition of at least this many bytes after the boot
    partition (it takes the rest of the disk when ``size`` is larger); None adds none.
    """

    size: int | None = None
    boot_size: int | None = None
    data_size: int | None = None

    def __post_init__(self) -> None:
        for field in ("size", "boot_size", "data_size"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise UsageError(f"{field.replace('_', ' ')} must be positive, got {value}")


class FormatWriter(Protocol):
    """One output format, declaring its own facts (the one registry, builders/formats.py,
    and everything derived from it, --help, boot detection, docs, read them)."""

    @property
    def name(self) -> str:
        """The YAML/CLI spelling (a read-only attribute satisfies it, frozen dataclasses too)."""
        ...

    @property
    def files(self) -> tuple[str, ...]:
        """What follows the image name in the name of each file ``write`` returns, in order."""
        ...

    @property
    def extension(self) -> str:
        """What follows the image name in the main file's name (one of ``files``: the file
        that names the artifact, ``-initrd.img`` for kernel+initrd)."""
        ...

    @property
    def boot(self) -> BootMethod | None:
        """How a machine boots the output; None: it does not boot (``tar``)."""
        ...

    @property
    def needs(self) -> frozenset[BootInput]:
        """The inputs ``write`` reads; only these are produced and passed."""
        ...

    def tools(self) -> Sequence[str]:
        """Programs this writer runs, checked before any work starts."""
        ...

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        """Write the format's file(s) into the directory ``dest`` and return their paths."""
        ...


class OneFile:
    """For writers that write one file, the image name followed by their ``extension``."""

    extension: str

    @property
    def files(self) -> tuple[str, ...]:
        return (self.extension,)


# --- shared helpers ---------------------------------------------------------------------------


def derive_bytes(digest: str, purpose: str, length: int) -> bytes:
    """``length`` bytes that depend only on the image digest and what they are for."""
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"provision:{purpose}:{counter}:{digest}".encode()).digest()
        counter += 1
    return out[:length]


def derive_uuid(digest: str, purpose: str) -> uuid.UUID:
    """A random-looking (version 4) UUID fixed by the image digest."""
    return uuid.UUID(bytes=derive_bytes(digest, purpose, 16), version=4)


def derive_hex32(digest: str, purpose: str) -> str:
    """Eight hex digits (MBR disk id, FAT volume id, VMDK CID), never all zero or all f."""
    value = int.from_bytes(derive_bytes(digest, purpose, 4), "big")
    if value in (0, 0xFFFFFFFF):
        value = 0x50524F56  # "PROV"
    return f"{value:08x}"


def clamp_fat_epoch(epoch: int) -> int:
    """FAT holds dates from 1980 to 2107 only."""
    return min(max(epoch, FAT_EPOCH_MIN), FAT_EPOCH_MAX)


def tool_env(epoch: int) -> dict[str, str]:
    """Environment that makes the Debian tools deterministic."""
    return {
        "SOURCE_DATE_EPOCH": str(epoch),
        "E2FSPROGS_FAKE_TIME": str(epoch),
        "TZ": "UTC",
        "LC_ALL": "C",
    }


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def check_cmdline(cmdline: str) -> str:
    """A kernel command line must be one line of printable text."""
    if any(ch in cmdline for ch in "\n\r\0"):
        raise UsageError("the kernel command line must be a single line")
    return cmdline.strip()


# Files (not programs) the writers read, with the Debian package that ships them.
DATA_FILES: Mapping[str, str] = {
    "/usr/lib/syslinux/mbr/mbr.bin": "syslinux-common",
    "/usr/lib/syslinux/mbr/gptmbr.bin": "syslinux-common",
    "/usr/lib/ISOLINUX/isolinux.bin": "isolinux",
    "/usr/lib/ISOLINUX/isohdpfx.bin": "isolinux",
    "/usr/lib/syslinux/modules/bios/ldlinux.c32": "syslinux-common",
    "/usr/lib/systemd/boot/efi/systemd-bootx64.efi": "systemd-boot-efi",
    "/usr/lib/systemd/boot/efi/linuxx64.efi.stub": "systemd-boot-efi",
}


def require_files(paths: Sequence[str]) -> None:
    """Raise before any work when a data file a writer copies is missing."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        packages = sorted({DATA_FILES.get(p, "?") for p in missing})
        raise ToolMissingError(
            "missing file" + ("s" if len(missing) > 1 else "") + ": " + ", ".join(missing),
            hint="install with: apt-get install " + " ".join(packages),
        )


def copy_sparse(src: Path, dst_fd: int, dst_offset: int, *, chunk: int = MIB) -> int:
    """Copy ``src`` into an open file at ``dst_offset``, leaving holes where ``src`` has zeros.
    Returns the number of bytes of ``src``."""
    total = 0
    zero = bytes(chunk)
    with open(src, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            if block != zero[: len(block)]:
                os.pwrite(dst_fd, block, dst_offset + total)
            total += len(block)
    return total
