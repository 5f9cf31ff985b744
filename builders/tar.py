"""A deterministic tar of the whole root (the ``tar`` format and the canonical rootfs tar the
disk and ISO formats consume).

POSIX pax format; entries in the tree's sorted pre-order, numeric owners with empty names,
mtimes clamped to ``[0, epoch]``, extended attributes as ``SCHILY.xattr.*`` records, hard links
as links to the first name, the archive padded to 10 KiB records as GNU tar does. The links
are the tree's: the identical container files assembly linked (provision/dedupe.py) are links
here too, so the ``tar`` output, squashfs and erofs carry the same links as the initrd.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from provision.assemble.tree import Node, NodeKind, Spool, Tree

BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20

_TYPES = {
    NodeKind.DIR: tarfile.DIRTYPE,
    NodeKind.FILE: tarfile.REGTYPE,
    NodeKind.SYMLINK: tarfile.SYMTYPE,
    NodeKind.CHAR: tarfile.CHRTYPE,
    NodeKind.BLOCK: tarfile.BLKTYPE,
    NodeKind.FIFO: tarfile.FIFOTYPE,
}


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


def tar_header(path: str, node: Node, *, epoch: int, link_to: str | None = None) -> bytes:
    """The header block(s) of one entry."""
    info = tarfile.TarInfo(path + "/" if node.is_dir else path)
    info.mode = node.mode
    info.uid, info.gid = node.uid, node.gid
    info.uname = info.gname = ""
    info.mtime = min(max(node.mtime, 0), epoch)
    if link_to is not None:
        info.type = tarfile.LNKTYPE
        info.linkname = link_to
    else:
        info.type = _TYPES[node.kind]
        if node.kind is NodeKind.FILE:
            info.size = node.size
        elif node.kind is NodeKind.SYMLINK:
            info.linkname = node.target
        elif node.kind in (NodeKind.CHAR, NodeKind.BLOCK):
            info.devmajor, info.devminor = node.rdev
    if node.xattrs:
        info.pax_headers = {
            "SCHILY.xattr." + key: value.decode("utf-8", "surrogateescape")
            for key, value in sorted(node.xattrs.items())
        }
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def write_tar(
    tree: Tree,
    spool: Spool,
    out: _Sink,
    *,
    epoch: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``tree`` as a tar archive into ``out``; return the number of bytes written."""
    first_name: dict[int, str] = {}
    written = 0
    for path, node in tree.walk():
        link_to = None
        if node.kind is not NodeKind.DIR:
            link_to = first_name.get(id(node))
            if link_to is None:
                first_name[id(node)] = path
        head = tar_header(path, node, epoch=epoch, link_to=link_to)
        out.write(head)
        written += len(head)
        if link_to is None and node.kind is NodeKind.FILE and node.size:
            for chunk in spool.iter_range(node.offset, node.size):
                out.write(chunk)
            pad = -node.size % BLOCK
            if pad:
                out.write(b"\0" * pad)
            written += node.size + pad
        if progress is not None:
            progress(written)
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    out.write(b"\0" * end)
    return written + end


def write_tar_files(out: _Sink, members: list[tuple[str, bytes | Path, int]], *, epoch: int) -> int:
    """A tar of regular files ``(name, data or path of a file, mode)``, streamed from disk
    (tar-kernel-initrd)."""
    written = 0
    for name, source, mode in members:
        info = tarfile.TarInfo(name)
        info.size = len(source) if isinstance(source, bytes) else source.stat().st_size
        info.mode, info.mtime = mode, epoch
        info.uname = info.gname = ""
        head = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        out.write(head)
        if isinstance(source, bytes):
            out.write(source)
        else:
            with open(source, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    out.write(chunk)
        pad = -info.size % BLOCK
        out.write(b"\0" * pad)
        written += len(head) + info.size + pad
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    out.write(b"\0" * end)
    return written + end
