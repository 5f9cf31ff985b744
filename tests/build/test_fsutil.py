"""The shared file helpers: atomic outputs leave either the old file or the new one, never
a half-written file or a stray temporary; hashing writers agree with hashlib."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from provision.fsutil import HashingWriter, atomic_output, file_sha256, write_bytes_atomic


def test_atomic_output_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as out:
        out.write(b"half of the new")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    old_umask = os.umask(0o077)  # the mode is set explicitly, whatever the umask
    try:
        write_bytes_atomic(target, b"new", mode=0o640)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_hashing_writer_matches_hashlib(algorithm: str, tmp_path: Path) -> None:
    sink = io.BytesIO()
    writer = HashingWriter(sink, algorithm)
    for chunk in (b"abc", b"", b"x" * 100_000):
        assert writer.write(chunk) == len(chunk)
    data = sink.getvalue()
    assert writer.size == len(data) == 100_003
    assert writer.digest == f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    path = tmp_path / "blob"
    path.write_bytes(data * 11)  # more than one read chunk
    assert file_sha256(path) == ("sha256:" + hashlib.sha256(data * 11).hexdigest(),
                                 len(data) * 11)
