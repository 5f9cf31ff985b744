"""Small file helpers shared by the OCI store, the build, the builders, the targets and the
reconcile CLI: every output provision writes goes through them.

* :func:`atomic_output` and its shorthands :func:`write_bytes_atomic`, :func:`write_text_atomic`,
  :func:`write_json_atomic`, :func:`copy_file_atomic`: write to a temporary name in the
  target's directory, fsync, rename into place and fsync the directory; a failure leaves the
  old file (or none) and no temporary;
* :func:`move_into_place`: rename a finished file (already on the target's file system) over
  its final name;
* :func:`check_replaceable`: an output may only replace a regular file or nothing; a device,
  directory, FIFO or socket at the output's name is refused (``--out /dev/full`` must not turn
  the device node into a file);
* :class:`HashingWriter`: a write-through sink that keeps the digest and size of what passed;
* :func:`file_sha256`, :func:`file_sha256_hex` and :func:`sha256_digest`: SHA-256 of a file
  (streaming, in 1 MiB chunks) or of bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

from provision.errors import ProvisionError, UsageError

CHUNK = 1 << 20
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def check_replaceable(path: Path) -> None:
    """Raise UsageError unless ``path`` is a regular file (a symlink is followed) or absent."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ProvisionError(f"cannot write {path}: {exc.strerror}") from None
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise UsageError(
        f"refusing to write {path}: it is {kind}, and an output may only replace a regular file",
        hint="give the path of a new or existing regular file",
    )


def check_output_path(path: Path) -> None:
    """Before any work: the output's directory exists and ``path`` is a regular file or absent
    (:func:`check_replaceable`); a UsageError naming what is wrong otherwise."""
    parent = Path(path).parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UsageError(f"cannot write {path}: the directory {parent} {what}")
    check_replaceable(Path(path))


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents to. When the block ends without an
    exception the file is flushed, fsynced, given ``mode`` and renamed over ``path``;
    otherwise it is removed. The directory must exist; ``path`` must be a regular file or
    absent (:func:`check_replaceable`)."""
    path = Path(path)
    check_replaceable(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ProvisionError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, mode)
        check_replaceable(path)  # again: it may have appeared while we wrote
        os.replace(tmp_name, path)
        fsync_directory(path.parent)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path, mode) as out:
        out.write(data)
    return path


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    return write_bytes_atomic(path, text.encode(), mode)


def write_json_atomic(path: Path, value: Any, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``value`` as JSON (indented, keys sorted, a final newline)."""
    return write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n", mode)


def copy_file_atomic(source: Path, path: Path, mode: int = 0o644) -> Path:
    """Replace ``path`` with a copy of ``source`` atomically."""
    with open(source, "rb") as src, atomic_output(path, mode) as out:
        shutil.copyfileobj(src, out, CHUNK)
    return path


def move_into_place(source: Path, path: Path, mode: int = 0o644) -> Path:
    """Give the finished file ``source`` ``mode`` and rename it over ``path`` (the same file
    system); ``path`` must be a regular file or absent."""
    path = Path(path)
    check_replaceable(path)
    os.chmod(source, mode)
    os.replace(source, path)
    fsync_directory(path.parent)
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


def file_sha256_hex(path: Path) -> str:
    """The SHA-256 of a file in hex (as apt's indexes and lock files write it)."""
    return file_sha256(path)[0].removeprefix("sha256:")


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
