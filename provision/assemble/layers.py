"""Applying image layers onto a :class:`~provision.assemble.tree.Tree`, the way containerd does.

- entry names are cleaned relative to the root (``/etc/x``, ``./etc/x`` and ``etc/x`` are
  the same); a directory entry for the root itself is ignored, as containerd ignores it;
- ``.wh.NAME`` deletes NAME; ``.wh..wh..opq`` empties its directory of everything lower
  layers put there (entries of the same layer stay);
- a hard link names a path inside the same root; it must exist and not be a directory;
- symlinks in an entry's parent directories are followed INSIDE the root: ``var/run -> /run``
  means the tree's ``run``, and ``var/run/x`` lands in ``run/x``.

Refused with a :class:`~provision.errors.HostileInputError` that names image, layer and entry:
``..`` past the top, a symlink chain that climbs out, a hard link to outside or to a
directory, device nodes in an image where none belong, names longer than the kernel allows,
absurd sizes, a non-directory replacing the root, a whiteout of the root, unknown entry types
and archives that are not tar. Nothing here touches the host file system except the spool.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from provision.assemble.tree import (
    Node,
    NodeKind,
    PathEscape,
    Spool,
    Tree,
    TreeError,
    clean_path,
)
from provision.compress import DECOMPRESS_ERRORS
from provision.errors import HostileInputError

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"

_KINDS = {
    tarfile.REGTYPE: NodeKind.FILE,
    tarfile.AREGTYPE: NodeKind.FILE,
    tarfile.CONTTYPE: NodeKind.FILE,
    tarfile.DIRTYPE: NodeKind.DIR,
    tarfile.SYMTYPE: NodeKind.SYMLINK,
    tarfile.CHRTYPE: NodeKind.CHAR,
    tarfile.BLKTYPE: NodeKind.BLOCK,
    tarfile.FIFOTYPE: NodeKind.FIFO,
}


@dataclass(frozen=True)
class LayerLimits:
    """What a layer may contain before it counts as hostile."""

    max_path: int = 4096  # PATH_MAX
    max_name: int = 255  # NAME_MAX
    max_file_size: int = 64 << 30
    max_total_size: int = 512 << 30
    max_entries: int = 4_000_000


DEFAULT_LIMITS = LayerLimits()


@dataclass(frozen=True)
class LayerOrigin:
    """Where entries come from, for error messages: ``image X, layer Y``."""

    image: str
    layer: str

    def error(self, entry: str, reason: str) -> HostileInputError:
        return HostileInputError(
            f"refused image {self.image}, layer {self.layer}, entry {entry!r}: {reason}",
            hint="the image is malformed or hostile; rebuild it or use another one",
        )


def short_digest(digest: str) -> str:
    return digest[:19] if digest.startswith("sha256:") else digest


class _LayerApplier:
    """The state of applying one layer: its origin, limits and the paths it unpacked."""

    def __init__(
        self,
        tree: Tree,
        spool: Spool,
        origin: LayerOrigin,
        *,
        allow_devices: bool,
        limits: LayerLimits,
    ) -> None:
        self.tree = tree
        self.spool = spool
        self.origin = origin
        self.allow_devices = allow_devices
        self.limits = limits
        self.unpacked: set[tuple[str, ...]] = set()
        self.total = 0
        self.entries = 0

    # -- checks ---------------------------------------------------------------------------------
    def check_name(self, name: str, what: str = "name") -> list[str]:
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > self.limits.max_path:
            raise self.origin.error(
                name[:80] + "...",
                f"{what} is {len(raw)} bytes long (the limit is {self.limits.max_path})",
            )
        if b"\0" in raw:
            raise self.origin.error(name, f"{what} contains a NUL byte")
        for part in name.split("/"):
            if len(part.encode("utf-8", "surrogateescape")) > self.limits.max_name:
                raise self.origin.error(
                    name[:80] + "...",
                    f"a component of the {what} is longer than {self.limits.max_name} bytes",
                )
        try:
            return clean_path(name)
        except PathEscape:
            raise self.origin.error(name, f"{what} climbs above the image root with '..'") from None

    # -- entries ---------------------------------------------------------------------------------
    def apply_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise self.origin.error(name, f"more than {self.limits.max_entries} entries")
        parts = self.check_name(name)
        base = parts[-1] if parts else ""
        if base.startswith(WHITEOUT_PREFIX):
            self.apply_whiteout(name, parts)
            return
        kind = _KINDS.get(member.type)
        if member.type == tarfile.LNKTYPE:
            self.apply_hardlink(name, parts, member.linkname)
            return
        if kind is None:
            raise self.origin.error(name, f"unsupported tar entry type {member.type!r}")
        if not parts:
            if kind is NodeKind.DIR:
                return  # containerd ignores the root's own entry
            raise self.origin.error(name, "a non-directory would replace the image root")
        if kind in (NodeKind.CHAR, NodeKind.BLOCK) and not self.allow_devices:
            raise self.origin.error(
                name,
                f"device node ({kind.value} "
                f"{member.devmajor}:{member.devminor}) in an image that "
                "may not carry devices",
            )
        node = Node(
            kind, member.mode, member.uid, member.gid, int(member.mtime), xattrs=_xattrs(member)
        )
        if kind is NodeKind.FILE:
            self.spool_content(tar, member, node)
        elif kind is NodeKind.SYMLINK:
            if not member.linkname:
                raise self.origin.error(name, "symlink without a target")
            self.check_length(name, member.linkname)
            node.target = member.linkname
        elif kind in (NodeKind.CHAR, NodeKind.BLOCK):
            node.rdev = (member.devmajor, member.devminor)
        self.place(name, parts, node)

    def check_length(self, name: str, target: str) -> None:
        if len(target.encode("utf-8", "surrogateescape")) > self.limits.max_path:
            raise self.origin.error(name, "link target longer than PATH_MAX")

    def spool_content(self, tar: tarfile.TarFile, member: tarfile.TarInfo, node: Node) -> None:
        size = member.size
        if size < 0 or size > self.limits.max_file_size:
            raise self.origin.error(
                member.name,
                f"absurd file size {size} bytes (the limit is {self.limits.max_file_size})",
            )
        self.total += size
        if self.total > self.limits.max_total_size:
            raise self.origin.error(
                member.name, f"the layer unpacks to more than {self.limits.max_total_size} bytes"
            )
        source = tar.extractfile(member)
        if source is None:
            raise self.origin.error(member.name, "file entry without content")
        try:
            node.offset, node.size = self.spool.add_stream(source, size)  # type: ignore[arg-type]
        except TreeError as exc:
            raise self.origin.error(member.name, f"truncated: {exc}") from None

    def place(self, name: str, parts: list[str], node: Node) -> None:
        try:
            located = self.tree.put("/".join(parts), node, parents=Node.directory())
        except PathEscape as exc:
            raise self.origin.error(
                name, f"escapes the image root through a symlink ({exc})"
            ) from None
        except TreeError as exc:
            raise self.origin.error(name, str(exc)) from None
        self.unpacked.add(located.parts)

    def apply_hardlink(self, name: str, parts: list[str], linkname: str) -> None:
        if not parts:
            raise self.origin.error(name, "a hard link would replace the image root")
        self.check_length(name, linkname)
        try:
            target_parts = clean_path(linkname)
        except PathEscape:
            raise self.origin.error(
                name, f"hard link to {linkname!r}, outside the image root"
            ) from None
        if not target_parts:
            raise self.origin.error(name, "hard link to the image root")
        try:
            located = self.tree.locate(target_parts)
        except PathEscape:
            raise self.origin.error(
                name, f"hard link to {linkname!r} resolves outside the image root"
            ) from None
        except TreeError as exc:
            raise self.origin.error(
                name, f"hard link to {linkname!r}, which does not exist in the image ({exc})"
            ) from None
        target = located.node if located is not None else None
        if target is None:
            raise self.origin.error(
                name, f"hard link to {linkname!r}, which does not exist in the image"
            )
        if target.is_dir:
            raise self.origin.error(name, f"hard link to directory {linkname!r}")
        self.place(name, parts, target)

    def apply_whiteout(self, name: str, parts: list[str]) -> None:
        base = parts[-1]
        directory = parts[:-1]
        try:
            located = (
                self.tree.locate(directory, create=Node.directory(), follow_last=True)
                if directory
                else None
            )
        except PathEscape as exc:
            raise self.origin.error(name, f"whiteout escapes the image root ({exc})") from None
        except TreeError as exc:
            raise self.origin.error(name, str(exc)) from None
        parent = self.tree.root if located is None else located.node
        parent_parts = () if located is None else located.parts
        if base == WHITEOUT_OPAQUE:
            if parent is not None and parent.is_dir:
                self._clear_lower(parent, parent_parts)
            return
        victim = base[len(WHITEOUT_PREFIX) :]
        if victim in ("", ".", "..") or victim.startswith(WHITEOUT_PREFIX):
            raise self.origin.error(name, "whiteout of the image root or of an invalid name")
        if parent is not None and parent.children is not None:
            parent.children.pop(victim, None)

    def _clear_lower(self, directory: Node, parts: tuple[str, ...]) -> None:
        assert directory.children is not None
        for child_name in list(directory.children):
            child_parts = (*parts, child_name)
            if child_parts not in self.unpacked:
                del directory.children[child_name]
            else:
                child = directory.children[child_name]
                if child.is_dir:
                    self._clear_lower(child, child_parts)


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes] | None:
    found = {
        key[len("SCHILY.xattr.") :]: value.encode("utf-8", "surrogateescape")
        for key, value in member.pax_headers.items()
        if key.startswith("SCHILY.xattr.")
    }
    return found or None


def apply_layer(
    tree: Tree,
    stream: BinaryIO,
    spool: Spool,
    origin: LayerOrigin,
    *,
    allow_devices: bool = False,
    limits: LayerLimits = DEFAULT_LIMITS,
) -> None:
    """Apply one uncompressed layer tar, read as a stream, onto ``tree``."""
    applier = _LayerApplier(tree, spool, origin, allow_devices=allow_devices, limits=limits)
    try:
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=2, bufsize=1 << 20) as tar:
            for member in _members(tar, origin):
                applier.apply_member(tar, member)
    except tarfile.TarError as exc:
        raise origin.error("?", f"not a valid tar archive: {exc}") from None
    except DECOMPRESS_ERRORS as exc:
        raise origin.error("?", f"cannot read the layer: {exc}") from None


def _members(tar: tarfile.TarFile, origin: LayerOrigin) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            member = tar.next()
        except tarfile.HeaderError as exc:
            raise origin.error("?", f"corrupt tar header: {exc}") from None
        if member is None:
            return
        yield member


def merge_tree(dst: Tree, src: Tree, origin: LayerOrigin, *, prefix: str = "") -> None:
    """Unpack every entry of ``src`` into ``dst`` under ``prefix``, in order, resolving paths
    in ``dst`` (symlinks inside ``dst``), as unpacking ``src``'s tar there would. Non-directory
    nodes are shared, which keeps hard links linked."""
    for path, node in src.walk():
        full = f"{prefix}/{path}" if prefix else path
        copy = Node.directory(node.mode, node.uid, node.gid, node.mtime) if node.is_dir else node
        if node.is_dir:
            copy.xattrs = node.xattrs
        try:
            dst.put(full, copy, parents=Node.directory())
        except PathEscape as exc:
            raise origin.error(path, f"escapes the root through a symlink ({exc})") from None
        except TreeError as exc:
            raise origin.error(path, str(exc)) from None
