"""Write OCI images into the store from uncompressed layer tars and a config section.

Reproducible: layers compressed by :mod:`provision.compress` (gzip with mtime 0 and no file
name, fixed levels: :data:`LAYER_LEVELS`), canonical JSON (sorted keys, no white
space), timestamps from ``created`` (SOURCE_DATE_EPOCH), so the same inputs give the same
manifest digest on any machine, at any time.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from provision.compress import CompressedWriter, Compression, codec_named
from provision.errors import ProvisionError
from provision.oci.model import (
    CHUNK,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    Descriptor,
    Platform,
    ResolvedImage,
)
from provision.oci.store import ImageStore
from provision.reference import ImageRef

LayerCompression = Literal["gzip", "zstd", "none"]
#: The level each codec compresses layers at (fixed: the same layer, the same digest).
LAYER_LEVELS: dict[str, int] = {"gzip": 6, "zstd": 3, "none": 0}
EntryKind = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]
_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def format_timestamp(epoch: int) -> str:
    """RFC 3339 UTC, as image configs write ``created``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def source_date_epoch(default: int = 0) -> int:
    """``$SOURCE_DATE_EPOCH`` when set and valid, else ``default``."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else default


@dataclass(frozen=True)
class LayerEntry:
    """One member of a layer tar. ``kind`` decides which other fields matter."""

    path: str
    content: bytes = b""
    kind: EntryKind = "file"
    linkname: str = ""
    mode: int | None = None  # default 0o644 for files, 0o755 for dirs, 0o777 for symlinks
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    devmajor: int = 0
    devminor: int = 0

    @classmethod
    def file(cls, path: str, content: bytes, mode: int = 0o644, **kw: Any) -> LayerEntry:
        return cls(path, content, "file", mode=mode, **kw)

    @classmethod
    def dir(cls, path: str, mode: int = 0o755, **kw: Any) -> LayerEntry:
        return cls(path, kind="dir", mode=mode, **kw)

    @classmethod
    def symlink(cls, path: str, target: str, **kw: Any) -> LayerEntry:
        return cls(path, kind="symlink", linkname=target, **kw)

    @classmethod
    def hardlink(cls, path: str, target: str, **kw: Any) -> LayerEntry:
        return cls(path, kind="hardlink", linkname=target, **kw)

    @classmethod
    def whiteout(cls, path: str) -> LayerEntry:
        """An AUFS-style whiteout deleting ``path`` from lower layers."""
        head, _, base = path.rstrip("/").rpartition("/")
        return cls(f"{head}/.wh.{base}" if head else f".wh.{base}", b"", "file", mode=0o644)

    @classmethod
    def opaque(cls, directory: str) -> LayerEntry:
        """An opaque-directory marker: hide everything lower layers had in ``directory``."""
        return cls(directory.rstrip("/") + "/.wh..wh..opq", b"", "file", mode=0o644)

    def default_mode(self) -> int:
        if self.mode is not None:
            return self.mode
        return {"dir": 0o755, "symlink": 0o777}.get(self.kind, 0o644)


EntryLike = LayerEntry | tuple[str, bytes | str | None]


def _as_entry(item: EntryLike) -> LayerEntry:
    if isinstance(item, LayerEntry):
        return item
    path, value = item
    if value is None:
        return LayerEntry.dir(path)
    if isinstance(value, str):
        return LayerEntry.symlink(path, value)
    return LayerEntry.file(path, bytes(value))


def tar_layer_from_entries(entries: Iterable[EntryLike]) -> bytes:
    """A deterministic layer tar from ``entries``, in the order given.

    Each entry is a :class:`LayerEntry`, or a tuple ``(path, value)`` where value is bytes
    (a 0644 file), None (a 0755 directory) or str (a symlink to that target). Owners are
    numeric with empty user/group names, mtimes 0 unless set: the same entries always give
    the same bytes. Paths are written as given (tests use this for hostile layers)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in entries:
            entry = _as_entry(item)
            info = tarfile.TarInfo(entry.path)
            info.type = _TAR_TYPES[entry.kind]
            info.mode = entry.default_mode()
            info.uid, info.gid = entry.uid, entry.gid
            info.uname = info.gname = ""
            info.mtime = entry.mtime
            info.linkname = entry.linkname
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            if entry.kind == "file":
                info.size = len(entry.content)
                tar.addfile(info, io.BytesIO(entry.content))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _compress_layer(source: IO[bytes], out: IO[bytes], compression: LayerCompression) -> str:
    """Stream ``source`` through the layer compressor into ``out``; the uncompressed digest."""
    codec_named(compression)  # an unknown name is a UsageError, not a KeyError
    diff = hashlib.sha256()
    with CompressedWriter(out, Compression(compression, LAYER_LEVELS[compression])) as sink:
        while chunk := source.read(CHUNK):
            diff.update(chunk)
            sink.write(chunk)
    return "sha256:" + diff.hexdigest()


def write_layer(
    store: ImageStore, layer: Path | bytes, compression: LayerCompression = "gzip"
) -> tuple[Descriptor, str]:
    """Compress one uncompressed layer tar into the store: (descriptor, diff_id)."""
    store.ensure_layout()
    with tempfile.TemporaryFile(dir=store.root / ".ingest") as out:
        if isinstance(layer, bytes | bytearray):
            diff_id = _compress_layer(io.BytesIO(layer), out, compression)
        else:
            with open(layer, "rb") as source:
                diff_id = _compress_layer(source, out, compression)
        out.seek(0)
        digest, size = store.write_blob(out)
    return Descriptor(codec_named(compression).layer_media_type(), digest, size), diff_id


def write_image(
    store: ImageStore,
    name: str | ImageRef | None,
    layers: Sequence[Path | bytes],
    config: Mapping[str, Any],
    *,
    platform: Platform | None = None,
    created: int = 0,
    annotations: Mapping[str, str] | None = None,
    compression: LayerCompression = "gzip",
    history: bool = True,
) -> ResolvedImage:
    """Write an image (layers bottom first, each an uncompressed tar file or bytes) with the
    image ``config`` section, and tag it ``name`` (normalised like a reference; None writes
    the blobs without tagging, e.g. to assemble a multi-arch index afterwards)."""
    platform = platform or Platform.host()
    with store.pinning():
        layer_descs: list[Descriptor] = []
        diff_ids: list[str] = []
        for layer in layers:
            desc, diff_id = write_layer(store, layer, compression)
            layer_descs.append(desc)
            diff_ids.append(diff_id)
        stamp = format_timestamp(created)
        image_config: dict[str, Any] = {
            "created": stamp,
            "architecture": platform.architecture,
            "os": platform.os,
            "config": dict(config),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        if platform.variant:
            image_config["variant"] = platform.variant
        if history:
            image_config["history"] = [
                {"created": stamp, "created_by": "provision"} for _ in diff_ids
            ]
        config_digest, config_size = store.write_json_blob(image_config)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": Descriptor(MT_OCI_CONFIG, config_digest, config_size).to_json(),
            "layers": [d.to_json() for d in layer_descs],
        }
        if annotations:
            manifest["annotations"] = dict(sorted(annotations.items()))
        digest, size = store.write_json_blob(manifest)
        desc = Descriptor(MT_OCI_MANIFEST, digest, size, {}, platform)
        ref_name = _tag_name(name)
        if ref_name is not None:
            store.tag(ref_name, desc)
    return ResolvedImage(
        name=ref_name or digest,
        digest=digest,
        manifest=manifest,
        config=image_config,
        layers=tuple(layer_descs),
        config_digest=config_digest,
        media_type=MT_OCI_MANIFEST,
        size=size,
    )


def write_index(
    store: ImageStore,
    name: str | ImageRef | None,
    images: Sequence[ResolvedImage],
    *,
    annotations: Mapping[str, str] | None = None,
) -> Descriptor:
    """Write a multi-platform image index over ``images`` (already in the store) and tag it."""
    if not images:
        raise ProvisionError("an image index needs at least one image")
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [
            Descriptor(MT_OCI_MANIFEST, image.digest, image.size, {}, image.platform).to_json()
            for image in images
        ],
    }
    if annotations:
        index["annotations"] = dict(sorted(annotations.items()))
    digest, size = store.write_json_blob(index)
    desc = Descriptor(MT_OCI_INDEX, digest, size)
    ref_name = _tag_name(name)
    if ref_name is not None:
        store.tag(ref_name, desc)
    return desc


def _tag_name(name: str | ImageRef | None) -> str | None:
    if name is None:
        return None
    if isinstance(name, ImageRef):
        return name.name
    try:
        return ImageRef.parse(name).name
    except ProvisionError:
        return name
