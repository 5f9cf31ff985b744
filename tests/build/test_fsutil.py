"""The shared file helpers: atomic outputs leave either the old file or the new one, never
a half-written file or a stray temporary, and replace only a regular file (never a device,
directory or FIFO); hashing writers agree with hashlib."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from provision.cli import main
from provision.errors import ProvisionError, UsageError
from provision.fsutil import (
    HashingWriter,
    atomic_output,
    copy_file_atomic,
    file_sha256,
    file_sha256_hex,
    move_into_place,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


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
    assert file_sha256(path) == ("sha256:" + hashlib.sha256(data * 11).hexdigest(), len(data) * 11)


def _special_files(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, a directory, a character device (a copy of /dev/full's node) and a symlink
    to the FIFO, all inside ``tmp_path``."""
    fifo, directory, device, link = (tmp_path / n for n in ("fifo", "dir", "full", "link"))
    os.mkfifo(fifo)
    directory.mkdir()
    os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 7))  # the tests run as root
    link.symlink_to(fifo)
    return {
        "a FIFO": fifo,
        "a directory": directory,
        "a character device": device,
        "a FIFO (through a symlink)": link,
    }


def test_outputs_replace_only_regular_files(tmp_path: Path) -> None:
    for kind, path in _special_files(tmp_path).items():
        before = os.lstat(path)
        writers: list[Callable[[Path], Path]] = [
            lambda p: write_bytes_atomic(p, b"x"),
            lambda p: write_text_atomic(p, "x"),
            lambda p: write_json_atomic(p, {}),
            lambda p: copy_file_atomic(Path(__file__), p),
        ]
        for write in writers:
            with pytest.raises(
                UsageError, match=f"refusing to write {path}: it is {kind.split(' (')[0]}"
            ):
                write(path)
        staged = tmp_path / "staged"
        staged.write_bytes(b"new")
        with pytest.raises(UsageError, match="an output may only replace a regular file"):
            move_into_place(staged, path)
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), kind
    # nothing half-written, no temporary left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo", "full", "link", "staged"]
    # a regular file, a symlink to one, and nothing at all are fine
    regular = tmp_path / "plan.json"
    regular.write_text("old")
    (tmp_path / "to-regular").symlink_to(regular)
    for path in (regular, tmp_path / "to-regular", tmp_path / "new.json"):
        write_json_atomic(path, {"b": 1, "a": [2]})
        assert path.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    move_into_place(tmp_path / "staged", regular, mode=0o600)
    assert regular.read_bytes() == b"new" and regular.stat().st_mode & 0o777 == 0o600


def test_a_missing_directory_is_a_provision_error(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="cannot write .*missing/plan.json: No such file"):
        write_bytes_atomic(tmp_path / "missing" / "plan.json", b"{}")


def test_plan_out_refuses_a_device_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``provision plan --out /dev/full`` replaced the device node with a file (issue 9)."""
    cluster = tmp_path / "cluster.yml"
    shutil.copy(Path(__file__).resolve().parents[2] / "examples" / "cluster-simulated.yml", cluster)
    device = _special_files(tmp_path)["a character device"]
    code = main(["plan", str(cluster), "--out", str(device)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"provision: error: refusing to write {device}: it is a character device")
    assert "Traceback" not in err
    assert stat.S_ISCHR(os.lstat(device).st_mode)


def test_file_sha256_hex_streams_and_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * (1 << 20) + 5)
    path.write_bytes(data)
    assert file_sha256_hex(path) == hashlib.sha256(data).hexdigest()
    copy = copy_file_atomic(path, tmp_path / "copy", mode=0o600)
    assert copy.read_bytes() == data and copy.stat().st_mode & 0o777 == 0o600
