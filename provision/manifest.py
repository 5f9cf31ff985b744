"""The build manifest ``NAME.manifest.json``: what went in and what came out.

Deterministic like the outputs (no times, no absolute paths): the image digest, the
SOURCE_DATE_EPOCH used, every spec file (name and sha256), every input image (role, name,
reference, manifest digest), the formats and options, and the sha256 and size of every
output file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provision.fsutil import file_sha256 as file_sha256
from provision.fsutil import write_bytes_atomic

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ImageRecord:
    role: str
    name: str
    ref: str
    digest: str
    platform: str


@dataclass(frozen=True)
class OutputRecord:
    file: str
    format: str
    sha256: str
    size: int


@dataclass(frozen=True)
class SpecRecord:
    file: str
    sha256: str


@dataclass(frozen=True)
class BuildManifest:
    name: str
    image_digest: str
    source_date_epoch: int
    platform: str
    specs: tuple[SpecRecord, ...]
    images: tuple[ImageRecord, ...]
    formats: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[OutputRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["version"] = MANIFEST_VERSION
        value["options"] = dict(self.options)
        return value


def record_outputs(
    paths: Sequence[tuple[str, Path]],
    known: Mapping[tuple[int, int], tuple[str, int]] | None = None,
) -> tuple[OutputRecord, ...]:
    """An OutputRecord for each (format, path). ``known`` maps (st_dev, st_ino) of files
    hashed while they were written to their (digest, size), which saves reading them again
    (outputs are often hard links of the pipeline's intermediate files)."""
    records = []
    for format_name, path in paths:
        st = path.stat()
        cached = (known or {}).get((st.st_dev, st.st_ino))
        digest, size = cached if cached and cached[1] == st.st_size else file_sha256(path)
        records.append(OutputRecord(path.name, format_name, digest, size))
    return tuple(records)


def render_manifest(manifest: BuildManifest) -> bytes:
    return (json.dumps(manifest.to_json(), sort_keys=True, indent=2) + "\n").encode()


def write_manifest(manifest: BuildManifest, path: Path) -> Path:
    """Write atomically (temp name in the same directory, then rename)."""
    return write_bytes_atomic(path, render_manifest(manifest))


def read_manifest(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    assert isinstance(value, dict)
    return value
