"""Small fixed VHDs for the Azure tests: sparse files with data at chosen MiB offsets, the
footer written by the project's own VHD builder."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

from provision.builders.vhd import FIXED, pack_footer

MIB = 1024 * 1024


def write_vhd(
    path: Path, size_mib: int, data_at_mib: Iterable[int], *, disk_type: int = FIXED
) -> Path:
    """A fixed VHD of ``size_mib`` MiB with 64 KiB of non-zero bytes at each MiB offset given."""
    size = size_mib * MIB
    with open(path, "wb") as f:
        f.truncate(size)
        for mib in data_at_mib:
            f.seek(mib * MIB)
            f.write(bytes([(mib % 250) + 1]) * 65536)
        f.seek(size)
        f.write(pack_footer(size, disk_type, uuid.UUID(int=7), 1700000000))
    return path
