"""Serving files from one root over HTTP, safely: nothing outside the root is ever opened.

A request path is refused (404, the same answer as a missing file, so probing learns nothing)
when it is absolute, holds ``..``, a NUL or a backslash, or names a symlink whose target leaves
the root, or anything but a regular file. Answers carry an ``ETag`` (size, mtime and inode),
honour ``If-None-Match`` (304), single ``Range: bytes=A-B`` requests (206, 416 when unsatisfiable)
and ``HEAD``; bodies go out with ``sendfile`` (no copy through Python)."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class ServedFile:
    path: Path
    size: int
    etag: str
    mtime: float


def resolve_served(root: Path, request_path: str) -> ServedFile | None:
    """The regular file ``request_path`` names inside ``root``, or None (refused or missing)."""
    if (
        not request_path
        or request_path.startswith("/")
        or "\\" in request_path
        or "\0" in request_path
    ):
        return None
    parts = request_path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    real_root = root.resolve()
    candidate = (real_root / request_path).resolve()
    if not candidate.is_relative_to(real_root):
        return None  # a symlink out of the root
    try:
        st = candidate.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'
    return ServedFile(candidate, st.st_size, etag, st.st_mtime)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """``(start, end_inclusive)`` of a single byte range, None for the whole file, or
    ``"unsatisfiable"``. Several ranges, or a malformed header, serve the whole file (RFC 9110
    lets a server ignore Range)."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return "unsatisfiable"
    return start, end


def send_file_range(sock_fd: int, path: Path, start: int, length: int) -> int:
    """Send ``length`` bytes of ``path`` from ``start`` with sendfile; returns bytes sent."""
    sent = 0
    with open(path, "rb") as handle:
        while sent < length:
            n = os.sendfile(sock_fd, handle.fileno(), start + sent, min(length - sent, 1 << 24))
            if n == 0:
                break
            sent += n
    return sent
