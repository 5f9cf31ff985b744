"""The root filesystem being assembled, held as metadata in memory.

A :class:`Tree` is a directory of :class:`Node` objects: type, mode, owner, mtime, link
target, device numbers and extended attributes. File contents never live in memory: they
are appended to a :class:`Spool` (one file in the build's own temp directory) and a node
keeps only ``(offset, size)``. Memory therefore grows with the number of entries, not with
the size of the image.

Hard links are two directory entries that hold the same :class:`Node` object.

Paths are resolved the way containerd resolves them while applying a layer: relative to the
tree's root, with symlinks followed INSIDE the tree (an absolute target ``/run`` means the
tree's own ``run``). Whatever would leave the root (``..`` past the top, a symlink chain that
climbs out) raises :class:`PathEscape`; the caller turns it into a located
:class:`~provision.errors.HostileInputError`.
"""

from __future__ import annotations

import enum
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

CHUNK = 1 << 20
MAX_SYMLINK_HOPS = 40


class NodeKind(enum.Enum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"

    @property
    def type_bits(self) -> int:
        return _TYPE_BITS[self]


_TYPE_BITS = {
    NodeKind.DIR: stat.S_IFDIR,
    NodeKind.FILE: stat.S_IFREG,
    NodeKind.SYMLINK: stat.S_IFLNK,
    NodeKind.CHAR: stat.S_IFCHR,
    NodeKind.BLOCK: stat.S_IFBLK,
    NodeKind.FIFO: stat.S_IFIFO,
}


class TreeError(Exception):
    """A path cannot be placed in the tree (not a directory, missing link target, ...)."""


class PathEscape(TreeError):
    """A path, or a symlink chain it goes through, resolves outside the tree's root."""


class Node:
    """One inode of the tree. Directories carry ``children``; files ``offset`` + ``size``
    into the spool; symlinks ``target``; devices ``rdev``."""

    __slots__ = (
        "kind",
        "mode",
        "uid",
        "gid",
        "mtime",
        "offset",
        "size",
        "target",
        "rdev",
        "xattrs",
        "children",
    )

    def __init__(
        self,
        kind: NodeKind,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        mtime: int = 0,
        *,
        offset: int = 0,
        size: int = 0,
        target: str = "",
        rdev: tuple[int, int] = (0, 0),
        xattrs: dict[str, bytes] | None = None,
    ) -> None:
        self.kind = kind
        self.mode = mode & 0o7777
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.offset = offset
        self.size = size
        self.target = target
        self.rdev = rdev
        self.xattrs = xattrs
        self.children: dict[str, Node] | None = {} if kind is NodeKind.DIR else None

    @classmethod
    def directory(cls, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = 0) -> Node:
        return cls(NodeKind.DIR, mode, uid, gid, mtime)

    @property
    def is_dir(self) -> bool:
        return self.kind is NodeKind.DIR

    @property
    def file_mode(self) -> int:
        """``st_mode``: type bits and permission bits."""
        return self.kind.type_bits | self.mode

    def copy_metadata_from(self, other: Node) -> None:
        self.mode, self.uid, self.gid, self.mtime = other.mode, other.uid, other.gid, other.mtime
        self.xattrs = other.xattrs

    def __repr__(self) -> str:
        return f"Node({self.kind.value}, {self.mode:o}, {self.uid}:{self.gid})"


def split_path(path: str) -> list[str]:
    """The components of ``path``, without empty and ``.`` components (``..`` kept)."""
    return [part for part in path.split("/") if part and part != "."]


def clean_path(path: str) -> list[str]:
    """``path`` cleaned lexically relative to the root (absolute paths count from the root).
    ``..`` past the top raises PathEscape."""
    out: list[str] = []
    for part in split_path(path):
        if part == "..":
            if not out:
                raise PathEscape(f"{path!r} climbs above the root")
            out.pop()
        else:
            out.append(part)
    return out


def sort_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


class Spool:
    """An append-only file holding the contents of every file of a build, with the sha256
    of each range it appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "w+b")  # noqa: SIM115 - closed by close()
        self._fd = self._file.fileno()
        self.size = 0
        self._digests: dict[int, tuple[int, bytes]] = {}  # offset -> (size, sha256)

    def add_bytes(self, data: bytes) -> tuple[int, int]:
        offset = self.size
        self._file.seek(offset)
        self._file.write(data)
        self.size += len(data)
        self._digests[offset] = (len(data), hashlib.sha256(data).digest())
        return offset, len(data)

    def add_stream(self, source: BinaryIO, size: int) -> tuple[int, int]:
        """Copy exactly ``size`` bytes of ``source``; a short read raises TreeError."""
        offset = self.size
        self._file.seek(offset)
        digest = hashlib.sha256()
        left = size
        while left:
            chunk = source.read(min(CHUNK, left))
            if not chunk:
                raise TreeError(f"content ends {left} bytes early")
            self._file.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
        self.size += size
        self._digests[offset] = (size, digest.digest())
        return offset, size

    def content_digest(self, offset: int, size: int) -> bytes:
        """The sha256 of ``size`` bytes at ``offset``: the one taken while they were
        appended, or (for a range that spans several appends) read and hashed now."""
        recorded = self._digests.get(offset)
        if recorded is not None and recorded[0] == size:
            return recorded[1]
        digest = hashlib.sha256()
        for chunk in self.iter_range(offset, size):
            digest.update(chunk)
        self._digests.setdefault(offset, (size, digest.digest()))
        return digest.digest()

    def iter_range(self, offset: int, size: int) -> Iterator[bytes]:
        self._file.flush()
        end = offset + size
        while offset < end:
            chunk = os.pread(self._fd, min(CHUNK, end - offset), offset)
            if not chunk:
                raise TreeError("spool is shorter than recorded")
            offset += len(chunk)
            yield chunk

    def read_range(self, offset: int, size: int) -> bytes:
        return b"".join(self.iter_range(offset, size))

    def open_range(self, offset: int, size: int) -> BinaryIO:
        self._file.flush()
        return cast(BinaryIO, _SpoolRange(self._fd, offset, size))

    def close(self) -> None:
        self._file.close()


class _SpoolRange:
    """A read-only stream over ``size`` bytes of the spool starting at ``offset``."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd, self._pos, self._end = fd, offset, offset + size

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        if n is None or n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._pos)
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> _SpoolRange:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@dataclass(frozen=True)
class Located:
    """Where a path landed: the directory node that holds it, its name there, and the
    resolved components from the root (after following symlinks in its parents)."""

    parent: Node
    name: str
    parts: tuple[str, ...]

    @property
    def node(self) -> Node | None:
        assert self.parent.children is not None
        return self.parent.children.get(self.name)


class Tree:
    """The root filesystem: a root directory node and path operations on it."""

    def __init__(self, root: Node | None = None) -> None:
        self.root = root or Node.directory()

    # -- resolution ---------------------------------------------------------------------------
    def _walk_to(
        self, parts: list[str], *, follow_last: bool, create: Node | None
    ) -> tuple[list[str], list[Node], str | None]:
        """Walk ``parts`` from the root following symlinks inside the tree. Returns the
        resolved components of the parent, the node stack, and the last name (None when the
        path is the root itself). Missing intermediate directories are created from the
        template ``create`` when given, else TreeError."""
        names: list[str] = []
        stack: list[Node] = [self.root]
        pending = list(reversed(parts))
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not names:
                    raise PathEscape("a symlink or path climbs above the root")
                names.pop()
                stack.pop()
                continue
            current = stack[-1]
            assert current.children is not None
            child = current.children.get(part)
            last = not any(p not in ("", ".") for p in pending)
            if child is not None and child.kind is NodeKind.SYMLINK and (follow_last or not last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise PathEscape(f"too many levels of symbolic links at {part!r}")
                target = child.target
                if target.startswith("/"):
                    names, stack = [], [self.root]
                pending.extend(reversed(target.split("/")))
                continue
            if last:
                return names, stack, part
            if child is None:
                if create is None:
                    raise TreeError(f"{'/'.join([*names, part])}: no such directory")
                child = Node.directory(create.mode, create.uid, create.gid, create.mtime)
                current.children[part] = child
            elif not child.is_dir:
                raise TreeError(f"{'/'.join([*names, part])}: not a directory")
            names.append(part)
            stack.append(child)
        return names, stack, None

    def locate(
        self, path: str | list[str], *, create: Node | None = None, follow_last: bool = False
    ) -> Located | None:
        """Resolve the parent of ``path`` (following symlinks inside the tree); None when
        the path is the root itself."""
        parts = split_path(path) if isinstance(path, str) else path
        names, stack, last = self._walk_to(parts, follow_last=follow_last, create=create)
        if last is None:
            return None
        return Located(stack[-1], last, (*names, last))

    def lookup(self, path: str, *, follow: bool = True) -> Node | None:
        """The node at ``path`` or None; symlinks in the path (and at its end when
        ``follow``) are followed inside the tree."""
        try:
            located = self.locate(path, follow_last=follow)
        except TreeError:
            return None
        return self.root if located is None else located.node

    # -- changes ------------------------------------------------------------------------------
    def put(self, path: str, node: Node, *, parents: Node | None = None) -> Located:
        """Place ``node`` at ``path`` (replacing what was there; an existing directory that
        receives a directory keeps its children and takes the new metadata)."""
        located = self.locate(path, create=parents or Node.directory())
        if located is None:
            if not node.is_dir:
                raise TreeError("cannot replace the root directory with a non-directory")
            self.root.copy_metadata_from(node)
            return Located(self.root, "", ())
        assert located.parent.children is not None
        existing = located.parent.children.get(located.name)
        if existing is not None and existing.is_dir and node.is_dir:
            existing.copy_metadata_from(node)
        else:
            located.parent.children[located.name] = node
        return located

    def mkdir_p(self, path: str, mode: int = 0o755, mtime: int = 0) -> Node:
        """The directory at ``path``, created with ``mode`` (and its parents) if missing."""
        template = Node.directory(mode, mtime=mtime)
        node = self.lookup(path)
        if node is not None and node.is_dir:
            return node
        located = self.put(path, Node.directory(mode, mtime=mtime), parents=template)
        return located.node or self.root

    def remove(self, path: str) -> bool:
        located = self.locate(path)
        if located is None or located.parent.children is None:
            return False
        return located.parent.children.pop(located.name, None) is not None

    # -- reading ------------------------------------------------------------------------------
    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every entry except the root, parents before children, names sorted bytewise."""
        stack: list[tuple[str, Iterator[tuple[str, Node]]]] = [("", _sorted_children(self.root))]
        while stack:
            prefix, entries = stack[-1]
            for name, node in entries:
                path = prefix + name
                yield path, node
                if node.is_dir:
                    stack.append((path + "/", _sorted_children(node)))
                    break
            else:
                stack.pop()

    def link_counts(self) -> dict[int, int]:
        """How many directory entries hold each non-directory node (by id)."""
        counts: dict[int, int] = {}
        for _path, node in self.walk():
            if not node.is_dir:
                counts[id(node)] = counts.get(id(node), 0) + 1
        return counts


def _sorted_children(directory: Node) -> Iterator[tuple[str, Node]]:
    assert directory.children is not None
    children = directory.children
    return iter([(name, children[name]) for name in sorted(children, key=sort_key)])
