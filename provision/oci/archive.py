"""OCI archives: a tar of an OCI image layout, as skopeo's ``oci-archive:`` reads and writes.

Export writes a deterministic tar (sorted members, mtime 0, root-owned) to a temp name and
renames it into place. Import streams the archive: every blob is verified against the
digest its path names, and anything hostile (absolute paths, ``..``, links, devices, names
outside the layout) is refused before a byte of it is stored.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from provision.errors import HostileInputError, ImageNotFoundError, ProvisionError, UsageError
from provision.fsutil import atomic_output
from provision.oci.model import (
    INDEX_MEDIA_TYPES,
    MT_OCI_INDEX,
    OCI_LAYOUT_VERSION,
    REF_NAME_ANNOTATION,
    Descriptor,
    canonical_json,
    parse_digest,
)
from provision.oci.store import ImageStore
from provision.reference import ImageRef

_BLOB_PATH = re.compile(r"blobs/(sha256|sha512)/([a-f0-9]+)")
MAX_INDEX_BYTES = 4 << 20


@dataclass(frozen=True)
class ImportedImage:
    name: str
    descriptor: Descriptor


def _name_of(ref: str | ImageRef) -> str:
    return ref.name if isinstance(ref, ImageRef) else ImageRef.parse(ref).name


def export_archive(store: ImageStore, refs: Sequence[str | ImageRef], output: Path) -> Path:
    """Write the images ``refs`` name (with every blob of theirs the store holds) as an OCI
    archive at ``output``."""
    if not refs:
        raise UsageError("export needs at least one image")
    entries: list[dict[str, Any]] = []
    for ref in refs:
        name = _name_of(ref)
        desc = store.lookup(name)
        if desc is None:
            raise ImageNotFoundError(f"image {name} is not in the cache")
        entries.append(
            desc.with_annotations({**desc.annotations, REF_NAME_ANNOTATION: name}).to_json()
        )
    blobs = sorted(store.reachable_blobs(Descriptor.from_json(e) for e in entries))
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_output(output) as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        _add_dir(tar, "blobs")
        for algorithm in sorted({d.split(":")[0] for d in blobs}):
            _add_dir(tar, f"blobs/{algorithm}")
        for digest in blobs:
            algorithm, hexpart = parse_digest(digest)
            path = store.blob_path(digest)
            info = _info(f"blobs/{algorithm}/{hexpart}", path.stat().st_size)
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
        _add_bytes(tar, "index.json", json.dumps(index, indent=2, sort_keys=True).encode())
        _add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    return output


def _info(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    tar.addfile(_info(name, 0, tarfile.DIRTYPE))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _member_path(member: tarfile.TarInfo, archive: Path) -> str:
    """The member's path inside the layout, or HostileInputError."""
    raw = member.name
    if raw.startswith("/") or "\\" in raw:
        raise HostileInputError(f"{archive}: archive entry {raw!r} has an absolute path")
    parts = PurePosixPath(raw).parts
    if ".." in parts:
        raise HostileInputError(f"{archive}: archive entry {raw!r} leaves the archive root")
    if member.issym() or member.islnk():
        raise HostileInputError(
            f"{archive}: archive entry {raw!r} is a link (to {member.linkname!r}); "
            "OCI archives hold only files and directories"
        )
    if not (member.isfile() or member.isdir()):
        raise HostileInputError(
            f"{archive}: archive entry {raw!r} is a device, fifo or other special file"
        )
    return "/".join(p for p in parts if p not in (".", ""))


def import_archive(
    store: ImageStore, archive: Path, name: str | ImageRef | None = None
) -> list[ImportedImage]:
    """Import every named image of an OCI archive (or, with ``name``, its only image under
    that name). Returns what was tagged."""
    archive = Path(archive)
    index_data: bytes | None = None
    try:
        with store.pinning(), tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                path = _member_path(member, archive)
                if member.isdir() or not path:
                    continue
                match = _BLOB_PATH.fullmatch(path)
                if match:
                    digest = f"{match.group(1)}:{match.group(2)}"
                    parse_digest(digest)
                    handle = tar.extractfile(member)
                    assert handle is not None
                    store.write_blob(handle, digest, expected_size=member.size)
                elif path == "index.json":
                    if member.size > MAX_INDEX_BYTES:
                        raise HostileInputError(f"{archive}: index.json is larger than 4 MiB")
                    handle = tar.extractfile(member)
                    assert handle is not None
                    index_data = handle.read()
                elif path == "oci-layout":
                    continue
                else:
                    raise HostileInputError(
                        f"{archive}: unexpected archive entry {path!r}",
                        hint="an OCI archive holds oci-layout, index.json "
                        "and blobs/<algorithm>/<hex>",
                    )
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ProvisionError(f"{archive}: not a readable tar archive: {exc}") from exc
    if index_data is None:
        raise ProvisionError(f"{archive}: no index.json: not an OCI archive")
    try:
        index = json.loads(index_data)
    except ValueError as exc:
        raise ProvisionError(f"{archive}: index.json is not valid JSON") from exc
    manifests = [Descriptor.from_json(m) for m in (index.get("manifests") or [])]
    for desc in manifests:
        if not store.has_blob(desc.digest):
            raise ProvisionError(f"{archive}: manifest {desc.digest} is missing from the archive")
    if name is not None:
        if len(manifests) != 1:
            raise UsageError(f"{archive} holds {len(manifests)} images; --name needs exactly one")
        target = _name_of(name)
        store.tag(target, manifests[0])
        return [ImportedImage(target, manifests[0])]
    imported = []
    for desc in manifests:
        ref_name = desc.annotations.get(REF_NAME_ANNOTATION)
        if not ref_name:
            continue
        try:
            target = ImageRef.parse(ref_name).name
        except ProvisionError:
            target = ref_name
        store.tag(target, desc)
        imported.append(ImportedImage(target, desc))
    if not imported:
        kinds = "index" if any(d.media_type in INDEX_MEDIA_TYPES for d in manifests) else "image"
        raise UsageError(
            f"{archive}: no {kinds} in it carries a name",
            hint="give one: provision cache import FILE --name REF",
        )
    return imported
