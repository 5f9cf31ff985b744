"""Small file helpers shared by the OCI store, the build and the reconcile CLI.

* :func:`atomic_output` / :func:`write_bytes_atomic`: write to a temporary name in the target's
  directory, fsync, then rename into place; a failure leaves no file and no temporary;
* :class:`HashingWriter`: a write-through sink that keeps the digest and size of what passed;
* :func:`file_sha256` and :func:`sha256_digest`: ``sha256:<hex>`` of a file or of bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

CHUNK = 1 << 20


@contextmanager
def atomic_output(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents to. When the block ends without an
    exception the file is flushed, fsynced, given ``mode`` and renamed over ``path``;
    otherwise it is removed. The directory must exist."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path, mode) as out:
        out.write(data)
    return path


class HashingWriter:
    """Writes to ``out`` and keeps the hash (``algorithm``, a hashlib name) and size of
    what passed."""

    def __init__(self, out: IO[bytes], algorithm: str = "sha256") -> None:
        self.out = out
        self.algorithm = algorithm
        self.hash = hashlib.new(algorithm)
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.out.write(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> str:
        return f"{self.algorithm}:{self.hash.hexdigest()}"


def file_sha256(path: Path) -> tuple[str, int]:
    """(``sha256:<hex>``, size) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
