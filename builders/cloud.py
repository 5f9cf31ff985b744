"""Cloud disk formats over the hybrid (BIOS + EFI) raw disk.

- ``gcp``: ``NAME.img.tar.gz``, a GNU tar holding exactly one member ``disk.raw`` (what GCE
  image import requires), member mtime SOURCE_DATE_EPOCH, owner 0:0, gzip header mtime 0 and
  no file name.
- ``aws``: ``NAME.raw``, the raw disk (EC2 snapshot import takes raw).
"""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.builders.base import BootInputs, FormatOptions
from provision.builders.disk import disk_tools, write_raw_disk

GCP_MEMBER = "disk.raw"


def write_gcp_tarball(raw: Path, out: Path, epoch: int, *, level: int = 6) -> None:
    """Pack ``raw`` as ``disk.raw`` in a reproducible GNU tar, gzip with mtime 0."""
    info = tarfile.TarInfo(GCP_MEMBER)
    info.size = raw.stat().st_size
    info.mtime = epoch
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    with open(out, "wb") as f, gzip.GzipFile(
        filename="", mode="wb", fileobj=f, mtime=0, compresslevel=level
    ) as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar, open(raw, "rb") as src:
        tar.addfile(info, src)


@dataclass(frozen=True)
class GcpWriter:
    name: str = "gcp"

    def tools(self) -> Sequence[str]:
        return disk_tools("hybrid")

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        from provision.builders.formats import OutputFormat

        out = dest / (inputs.name + OutputFormat(self.name).extension())
        raw = dest / f".{inputs.name}.disk.raw.tmp"
        try:
            write_raw_disk(inputs, raw, options, "hybrid")
            write_gcp_tarball(raw, out, inputs.source_date_epoch)
        finally:
            raw.unlink(missing_ok=True)
        return [out]
