"""VHD (Microsoft Virtual Hard Disk) written in pure Python from a raw disk.

``vhd`` is a fixed VHD: the raw disk followed by a 512-byte footer, its size a whole number of
MiB (Azure refuses anything else). ``dynamic-vhd`` is the sparse variant (footer copy, dynamic
header, block allocation table, 2 MiB blocks, footer) holding only the non-zero blocks.

The bytes are those ``qemu-img convert -O vpc -o subformat=fixed|dynamic,force_size`` writes,
with the two fields qemu fills at random or from the clock fixed instead: the timestamp comes
from SOURCE_DATE_EPOCH, the unique id from the image digest (and the checksum follows).
Creator ``qem2`` with the maximum CHS geometry tells readers (QEMU, Hyper-V, Azure) to take the
footer's current size as the disk size, so nothing is rounded to a cylinder.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.builders.base import (
    BOOT_FILES_NEEDED,
    MIB,
    SECTOR,
    BootInput,
    BootInputs,
    BootMethod,
    FormatOptions,
    OneFile,
    derive_uuid,
)
from provision.builders.disk import disk_boot, disk_tools, write_raw_disk
from provision.errors import UsageError

VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z
BLOCK_SIZE = 2 * MIB
FIXED, DYNAMIC = 2, 3
NO_OFFSET = 0xFFFFFFFFFFFFFFFF
UNALLOCATED = 0xFFFFFFFF
MAX_CHS = (65535, 16, 255)


def vhd_checksum(data: bytes) -> int:
    """One's complement of the byte sum (the checksum field itself counted as zero)."""
    return ~sum(data) & 0xFFFFFFFF


def pack_footer(size: int, disk_type: int, unique_id: uuid.UUID, epoch: int) -> bytes:
    """The 512-byte hard disk footer."""
    timestamp = max(0, epoch - VHD_EPOCH) & 0xFFFFFFFF
    data_offset = NO_OFFSET if disk_type == FIXED else SECTOR
    cylinders, heads, sectors = MAX_CHS

    def build(checksum: int) -> bytes:
        body = struct.pack(
            ">8sIIQI4sI4sQQHBBII16sB",
            b"conectix",
            2,
            0x00010000,
            data_offset,
            timestamp,
            b"qem2",
            0x00050003,
            b"Wi2k",
            size,
            size,
            cylinders,
            heads,
            sectors,
            disk_type,
            checksum,
            unique_id.bytes,
            0,
        )
        return body.ljust(SECTOR, b"\0")

    return build(vhd_checksum(build(0)))


def pack_dynamic_header(size: int) -> bytes:
    """The 1024-byte dynamic disk header (no parent)."""
    entries = -(-size // BLOCK_SIZE)

    def build(checksum: int) -> bytes:
        body = struct.pack(
            ">8sQQIII I",
            b"cxsparse",
            NO_OFFSET,
            3 * SECTOR,
            0x00010000,
            entries,
            BLOCK_SIZE,
            checksum,
        )
        return body.ljust(1024, b"\0")

    return build(vhd_checksum(build(0)))


def check_vhd_size(size: int) -> None:
    if size % MIB:
        raise UsageError(f"a VHD must be a whole number of MiB, {size} bytes is not")


def write_fixed_vhd(raw: Path, out: Path, unique_id: uuid.UUID, epoch: int) -> None:
    """Append the footer to the raw disk (renaming ``raw`` to ``out`` when possible)."""
    size = raw.stat().st_size
    check_vhd_size(size)
    os.replace(raw, out)
    with open(out, "r+b") as f:
        f.seek(size)
        f.write(pack_footer(size, FIXED, unique_id, epoch))


def write_dynamic_vhd(raw: Path, out: Path, unique_id: uuid.UUID, epoch: int) -> None:
    """Write the sparse VHD: only blocks holding a non-zero byte are stored."""
    size = raw.stat().st_size
    check_vhd_size(size)
    entries = -(-size // BLOCK_SIZE)
    bat_bytes = -(-entries * 4 // SECTOR) * SECTOR
    footer = pack_footer(size, DYNAMIC, unique_id, epoch)
    bitmap = b"\xff" * SECTOR  # 2 MiB block: 4096 sectors, one bit each
    bat = [UNALLOCATED] * entries
    next_sector = (3 * SECTOR + bat_bytes) // SECTOR
    with open(raw, "rb") as src, open(out, "wb") as dst:
        dst.seek(next_sector * SECTOR)
        for index in data_blocks(src.fileno(), size):
            src.seek(index * BLOCK_SIZE)
            block = src.read(BLOCK_SIZE)
            if not block.strip(b"\0"):
                continue
            bat[index] = next_sector
            dst.write(bitmap + block.ljust(BLOCK_SIZE, b"\0"))
            next_sector += (SECTOR + BLOCK_SIZE) // SECTOR
        dst.write(footer)
        dst.seek(0)
        dst.write(footer + pack_dynamic_header(size))
        dst.write(struct.pack(f">{entries}I", *bat).ljust(bat_bytes, b"\xff"))


def data_blocks(fd: int, size: int) -> list[int]:
    """Indexes of the blocks of a (sparse) file that hold data, skipping holes unread."""
    blocks: list[int] = []
    position = 0
    while position < size:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after position
            break
        if data >= size:
            break
        index = data // BLOCK_SIZE
        blocks.append(index)
        position = (index + 1) * BLOCK_SIZE
    return blocks


@dataclass(frozen=True)
class VhdWriter(OneFile):
    """``vhd`` (fixed) and ``dynamic-vhd``, both from the hybrid (BIOS + EFI) disk."""

    name: str
    dynamic: bool
    extension: str
    boot: BootMethod | None = disk_boot("hybrid", "vpc")
    needs: frozenset[BootInput] = BOOT_FILES_NEEDED

    def tools(self) -> Sequence[str]:
        return disk_tools("hybrid")

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        out = dest / (inputs.name + self.extension)
        raw = dest / f".{inputs.name}.raw.tmp"
        try:
            write_raw_disk(inputs, raw, options, "hybrid")
            unique_id = derive_uuid(inputs.digest, f"vhd-{self.name}")
            if self.dynamic:
                write_dynamic_vhd(raw, out, unique_id, inputs.source_date_epoch)
            else:
                write_fixed_vhd(raw, out, unique_id, inputs.source_date_epoch)
        finally:
            raw.unlink(missing_ok=True)
        return [out]
