"""FAT filesystem images written to a file with dosfstools and mtools: no mount, no loop device.

Reproducible: the volume id comes from the caller, ``mkfs.vfat --invariant`` fixes the rest of
the boot sector, and mtools stamps every entry with SOURCE_DATE_EPOCH (clamped to 1980).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from provision.builders.base import MIB, SECTOR, clamp_fat_epoch, round_up, tool_env
from provision.runner import run

FAT_TOOLS = ("mkfs.vfat", "mmd", "mcopy")
FAT32_FROM = 512 * MIB  # FAT16 below this (syslinux refuses FAT12), FAT32 from here
SMALL_FAT16_BELOW = 16 * MIB

FatContent = Mapping[str, "Path | bytes"]


def size_fat_for(files: FatContent, *, spare: float = 0.25, minimum: int = 8 * MIB) -> int:
    """A FAT size (whole MiB) holding ``files`` with ``spare`` room, never under ``minimum``."""
    used = 0
    for source in files.values():
        length = len(source) if isinstance(source, bytes) else source.stat().st_size
        used += round_up(max(length, 1), 4096)
    wanted = int(used * (1 + spare)) + 2 * MIB
    return max(round_up(wanted, MIB), minimum)


def write_fat_image(
    dest: Path,
    size: int,
    files: FatContent,
    *,
    label: str,
    volume_id: str,
    epoch: int,
    hidden_sectors: int = 0,
    bits: str | None = None,
) -> None:
    """Create ``dest`` (must not exist) as a FAT image of ``size`` bytes holding ``files``
    (keys are absolute paths inside the filesystem, values a source file or its bytes)."""
    env = tool_env(clamp_fat_epoch(epoch))
    bits = bits or ("32" if size >= FAT32_FROM else "16")
    # mkfs.vfat's default cluster size leaves a small FAT16 (8 MiB) under the 4085 clusters
    # FAT16 needs; one-sector clusters keep it valid up to 32 MiB.
    cluster = ["-s", "1"] if bits == "16" and size < SMALL_FAT16_BELOW else []
    run(
        [
            "mkfs.vfat",
            "-C",
            "--invariant",
            "-F",
            bits,
            *cluster,
            "-i",
            volume_id,
            "-n",
            label[:11].upper(),
            "-h",
            str(hidden_sectors),
            dest,
            str(size // 1024),
        ],
        env=env,
    )
    image = str(dest)
    directories: set[PurePosixPath] = set()
    for target in files:
        directories.update(p for p in PurePosixPath(target).parents if str(p) != "/")
    for directory in sorted(directories, key=lambda p: (len(p.parts), str(p))):
        run(["mmd", "-i", image, f"::{directory}"], env=env)
    with tempfile.TemporaryDirectory(prefix="fat-") as scratch:
        for index, (target, source) in enumerate(sorted(files.items())):
            if isinstance(source, bytes):
                staged = Path(scratch) / str(index)
                staged.write_bytes(source)
                source = staged
            run(["mcopy", "-i", image, "-o", "-Q", source, f"::{target}"], env=env)


def fat_hidden_sectors(offset: int) -> int:
    """The BPB's hidden-sector count for a filesystem starting at byte ``offset``."""
    return offset // SECTOR
