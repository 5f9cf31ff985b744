"""The newc ("070701") cpio archive the kernel unpacks as its initramfs.

Deterministic: entries in sorted pre-order (parents first, names bytewise), owners and modes
from the tree, mtimes clamped to ``[0, epoch]``, inode numbers assigned in that order from 1
(hard links share theirs; directories count ``2 + subdirectories`` links), device numbers 0.
Hard links follow GNU cpio's convention, which the kernel accepts: every name of the inode is
written, and the data travels with the last one. Assembly makes the identical files of the
container roots such links (provision/dedupe.py), so five containers' busybox is stored once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Protocol

from provision.assemble.tree import Node, NodeKind, Spool, Tree
from provision.errors import ProvisionError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


def _header(
    ino: int,
    mode: int,
    uid: int,
    gid: int,
    nlink: int,
    mtime: int,
    size: int,
    rdev: tuple[int, int],
    namesize: int,
) -> bytes:
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return MAGIC + b"".join(b"%08X" % (value & 0xFFFFFFFF) for value in fields)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def cpio_entry_header(
    name: bytes,
    ino: int,
    mode: int,
    uid: int,
    gid: int,
    nlink: int,
    mtime: int,
    size: int,
    rdev: tuple[int, int] = (0, 0),
) -> bytes:
    """Header, name and name padding of one newc entry (the data and its padding follow)."""
    head = _header(ino, mode, uid, gid, nlink, mtime, size, rdev, len(name) + 1) + name + b"\0"
    return head + _pad(len(head))


def write_cpio(
    tree: Tree,
    spool: Spool,
    out: _Sink,
    *,
    epoch: int,
    exclude: Collection[str] = (),
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``tree`` as a newc archive into ``out``; return the number of bytes written.
    Paths in ``exclude`` (and everything under them) are left out."""
    counts: dict[int, int] = {}
    for _path, node in _entries(tree, exclude):
        if not node.is_dir:
            counts[id(node)] = counts.get(id(node), 0) + 1
    remaining = dict(counts)
    inodes: dict[int, int] = {}
    subdirs = _subdir_counts(tree)
    written = 0
    for path, node in _entries(tree, exclude):
        key = id(node)
        ino = inodes.get(key)
        if ino is None:
            ino = inodes[key] = len(inodes) + 1
        nlink = 2 + subdirs.get(key, 0) if node.is_dir else counts[key]
        data, size = _payload(node)
        if node.kind is NodeKind.FILE and nlink > 1:
            remaining[key] -= 1
            if remaining[key] > 0:
                size = 0  # data goes with the last name
        if size > 0xFFFFFFFF:
            raise ProvisionError(f"{path}: {size} bytes is too big for a cpio archive (4 GiB)")
        mtime = min(max(node.mtime, 0), epoch)
        name = path.encode("utf-8", "surrogateescape")
        head = cpio_entry_header(
            name, ino, node.file_mode, node.uid, node.gid, nlink, mtime, size, node.rdev
        )
        out.write(head)
        written += len(head)
        if size:
            if data is not None:
                out.write(data)
            else:
                for chunk in spool.iter_range(node.offset, node.size):
                    out.write(chunk)
            pad = _pad(size)
            if pad:
                out.write(pad)
            written += size + len(pad)
        if progress is not None:
            progress(written)
    trailer = cpio_entry_header(TRAILER.encode(), 0, 0, 0, 0, 1, 0, 0)
    out.write(trailer)
    written += len(trailer)
    return written


def _entries(tree: Tree, exclude: Collection[str]) -> Iterator[tuple[str, Node]]:
    skip_prefixes = tuple(p.strip("/") + "/" for p in exclude)
    skip = {p.strip("/") for p in exclude}
    for path, node in tree.walk():
        if path in skip or path.startswith(skip_prefixes):
            continue
        yield path, node


def _payload(node: Node) -> tuple[bytes | None, int]:
    """(inline data, size): symlinks carry their target, files their spool range."""
    if node.kind is NodeKind.SYMLINK:
        target = node.target.encode("utf-8", "surrogateescape")
        return target, len(target)
    if node.kind is NodeKind.FILE:
        return None, node.size
    return None, 0


def _subdir_counts(tree: Tree) -> dict[int, int]:
    counts: dict[int, int] = {}
    stack = [tree.root]
    while stack:
        directory = stack.pop()
        assert directory.children is not None
        subdirs = [child for child in directory.children.values() if child.is_dir]
        counts[id(directory)] = len(subdirs)
        stack.extend(subdirs)
    return counts


def write_cpio_members(
    out: _Sink, members: list[tuple[str, int, bytes]], *, epoch: int = 0
) -> None:
    """A small cpio of ``(name, mode, data)`` regular files and directories (mode decides),
    for tests and tiny archives such as a microcode bundle."""
    for ino, (name, mode, data) in enumerate(members, start=1):
        out.write(cpio_entry_header(name.encode(), ino, mode, 0, 0, 1, epoch, len(data)))
        out.write(data + _pad(len(data)))
    out.write(cpio_entry_header(TRAILER.encode(), 0, 0, 0, 0, 1, 0, 0))
