"""Read the files of a .deb (``dpkg-deb --fsys-tarfile``) into image entries, refusing
hostile members: names or hard links leaving the root, device nodes, FIFOs."""

from __future__ import annotations

import fnmatch
import io
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.errors import HostileInputError, ProvisionError
from provision.oci.imagebuild import LayerEntry
from provision.runner import run


def clean_member_path(name: str) -> str | None:
    """``./usr/bin/x`` -> ``/usr/bin/x``; None for the root itself; raise when it escapes."""
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise ValueError(name)
        parts.append(part)
    return "/" + "/".join(parts) if parts else None


@dataclass(frozen=True)
class DebFile:
    """One member of a package's file system, as an image entry with its clean path."""

    path: str
    entry: LayerEntry


def read_fsys_tar(deb: Path) -> bytes:
    """The uncompressed file-system tar of ``deb``."""
    return run(["dpkg-deb", "--fsys-tarfile", str(deb)]).stdout


def iter_deb_files(deb: Path, label: str) -> Iterator[DebFile]:
    """Every member of ``deb`` (``label`` names it in errors), hard links resolved to copies
    of their targets' contents."""
    data = read_fsys_tar(deb)
    contents: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            try:
                path = clean_member_path(member.name)
            except ValueError:
                raise HostileInputError(
                    f"{label}: member {member.name!r} leaves the package root"
                ) from None
            if path is None:
                continue
            yield DebFile(path, _entry(tar, member, path, contents, label))


def _entry(
    tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, contents: dict[str, bytes],
    label: str,
) -> LayerEntry:  # fmt: skip
    rel = path.lstrip("/")
    mode, uid, gid = member.mode & 0o7777, member.uid, member.gid
    if member.isreg():
        handle = tar.extractfile(member)
        content = handle.read() if handle else b""
        contents[path] = content
        return LayerEntry(rel, content, "file", mode=mode, uid=uid, gid=gid)
    if member.isdir():
        return LayerEntry(rel, kind="dir", mode=mode, uid=uid, gid=gid)
    if member.issym():
        if not member.linkname or "\0" in member.linkname:
            raise HostileInputError(f"{label}: symlink {member.name!r} has no valid target")
        return LayerEntry(
            rel, kind="symlink", linkname=member.linkname, mode=mode, uid=uid, gid=gid
        )
    if member.islnk():
        try:
            target = clean_member_path(member.linkname)
        except ValueError:
            target = None
        if target is None or target not in contents:
            raise HostileInputError(
                f"{label}: hard link {member.name!r} -> {member.linkname!r} points outside "
                "the package's earlier files"
            )
        return LayerEntry(rel, contents[target], "file", mode=mode, uid=uid, gid=gid)
    raise HostileInputError(
        f"{label}: member {member.name!r} is a device node or FIFO, which packages of "
        "component images may not carry"
    )


def select_files(
    files: Sequence[DebFile], globs: Sequence[str] | None, label: str
) -> list[DebFile]:
    """The files matching ``globs`` (all when None). Every glob must match something."""
    if globs is None:
        return list(files)
    kept = []
    used: set[str] = set()
    for item in files:
        matched = [g for g in globs if fnmatch.fnmatchcase(item.path, g)]
        if matched:
            kept.append(item)
            used.update(matched)
    unused = [g for g in globs if g not in used]
    if unused:
        raise ProvisionError(
            f"{label}: keep glob{'s' if len(unused) > 1 else ''} "
            + ", ".join(unused)
            + " match nothing in the package",
            hint="list the package's files: dpkg-deb -c FILE.deb (the download cache holds it)",
        )
    return kept
