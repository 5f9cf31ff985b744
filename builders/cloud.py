"""Cloud disk formats over the hybrid (BIOS + EFI) raw disk.

- ``gcp``: ``NAME.img.tar.gz``, a GNU tar (``oldgnu`` format, sparse, as GCE image import
  documents) holding exactly one member ``disk.raw``, member mtime SOURCE_DATE_EPOCH, owner 0:0,
  gzip header mtime 0 and no file name. The disk is a whole number of GiB (GCE refuses others;
  the space past the partitions is a hole, free in the sparse tar) with an MBR whose boot
  partition is marked bootable. GNU tar writes the tar (it stores the holes of a big
  sparse disk as a map instead of gigabytes of zeros); provision's gzip codec compresses it.
- ``aws``: ``NAME.raw``, the raw disk (EC2 snapshot import takes raw).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.builders.base import (
    BOOT_FILES_NEEDED,
    BootInput,
    BootInputs,
    BootMethod,
    FormatOptions,
    OneFile,
    tool_env,
)
from provision.builders.disk import disk_tools, write_raw_disk
from provision.compress import GZIP, CompressedWriter, Compression
from provision.runner import run

GCP_MEMBER = "disk.raw"
GIB = 1024 * 1024 * 1024


def write_gcp_tarball(raw: Path, out: Path, epoch: int, *, level: int = 6) -> None:
    """Pack ``raw`` as ``disk.raw`` in a reproducible sparse GNU tar, gzip with mtime 0."""
    with tempfile.TemporaryDirectory(prefix="gcp-", dir=out.parent) as scratch:
        member = Path(scratch) / GCP_MEMBER
        try:
            os.link(raw, member)  # same directory tree: no copy
        except OSError:
            shutil.copyfile(raw, member)
        tar = Path(scratch) / "disk.tar"
        run(
            [
                "tar",
                "--format=oldgnu",
                "--sparse",
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                f"--mtime=@{epoch}",
                "--mode=0644",
                "-C",
                scratch,
                "-cf",
                tar,
                GCP_MEMBER,
            ],
            env=tool_env(epoch),
        )
        with (
            open(tar, "rb") as src,
            open(out, "wb") as f,
            CompressedWriter(f, Compression(GZIP.name, level)) as gz,
        ):
            shutil.copyfileobj(src, gz, 4 * 1024 * 1024)


@dataclass(frozen=True)
class GcpWriter(OneFile):
    name: str = "gcp"
    extension: str = ".img.tar.gz"
    boot: BootMethod | None = BootMethod("disk", "bios", hybrid=True, unpack=(GCP_MEMBER,))
    needs: frozenset[BootInput] = BOOT_FILES_NEEDED

    def tools(self) -> Sequence[str]:
        return (*disk_tools("hybrid"), "tar")

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        out = dest / (inputs.name + self.extension)
        raw = dest / f".{inputs.name}.disk.raw.tmp"
        try:
            write_raw_disk(inputs, raw, options, "hybrid", whole=GIB)
            write_gcp_tarball(raw, out, inputs.source_date_epoch)
        finally:
            raw.unlink(missing_ok=True)
        return [out]
