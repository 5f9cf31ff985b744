"""streamOptimized VMDK (what vSphere and AWS VM import take), by ``qemu-img convert``, then
normalised: qemu puts a random content id (CID) and the file name it wrote into the embedded
descriptor; both are replaced by values fixed by the image (CID from the digest, the published
file name), so two builds give identical bytes.
"""

from __future__ import annotations

import re
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.builders.base import (
    BOOT_FILES_NEEDED,
    SECTOR,
    BootInput,
    BootInputs,
    BootMethod,
    FormatOptions,
    OneFile,
    derive_hex32,
)
from provision.builders.disk import disk_boot, disk_tools, write_qemu_img, write_raw_disk
from provision.errors import ProvisionError

HEADER = struct.Struct("<4sIIQQQQ")  # magic, version, flags, capacity, grain, desc offset, size


def read_descriptor_area(path: Path) -> tuple[int, int]:
    """Byte offset and length of the embedded descriptor of a sparse VMDK."""
    with open(path, "rb") as f:
        magic, _version, _flags, _capacity, _grain, offset, length = HEADER.unpack(
            f.read(HEADER.size)
        )
    if magic != b"KDMV" or not offset:
        raise ProvisionError(f"{path} is not a sparse VMDK with an embedded descriptor")
    return offset * SECTOR, length * SECTOR


def write_normalised_descriptor(path: Path, *, cid: str, file_name: str) -> None:
    """Rewrite the CID and the extent's file name in place (the area is fixed-size)."""
    offset, length = read_descriptor_area(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        area = f.read(length)
        text = area.split(b"\0", 1)[0].decode()  # qemu may leave bytes after the NUL
        text = re.sub(r"(?m)^CID=[0-9a-fA-F]+$", f"CID={cid}", text)
        text = re.sub(r'(?m)^(RW \d+ SPARSE )".*"$', lambda m: f'{m.group(1)}"{file_name}"', text)
        new = text.encode()
        if len(new) > length:
            raise ProvisionError(f"VMDK descriptor of {path} outgrew its {length} bytes")
        f.seek(offset)
        f.write(new.ljust(length, b"\0"))


def write_vmdk(raw: Path, out: Path, *, cid: str) -> None:
    write_qemu_img(raw, out, "vmdk", ("subformat=streamOptimized",))
    write_normalised_descriptor(out, cid=cid, file_name=out.name)


@dataclass(frozen=True)
class VmdkWriter(OneFile):
    """``vmdk``: streamOptimized, from the hybrid (BIOS + EFI) disk."""

    name: str = "vmdk"
    extension: str = ".vmdk"
    boot: BootMethod | None = disk_boot("hybrid", "vmdk")
    needs: frozenset[BootInput] = BOOT_FILES_NEEDED

    def tools(self) -> Sequence[str]:
        return (*disk_tools("hybrid"), "qemu-img")

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        out = dest / (inputs.name + self.extension)
        with tempfile.TemporaryDirectory(prefix="vmdk-", dir=dest) as scratch:
            raw = Path(scratch) / "disk.raw"
            write_raw_disk(inputs, raw, options, "hybrid")
            write_vmdk(raw, out, cid=derive_hex32(inputs.digest, "vmdk-cid"))
        return [out]
