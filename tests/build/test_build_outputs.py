"""The archive writers and compressors: GNU cpio and tarfile read what we write, hard links
survive, the bytes are deterministic, and each compressor round-trips."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from provision.assemble.tree import Node, NodeKind, Spool, Tree
from provision.builders.cpio import write_cpio
from provision.builders.tar import write_tar
from provision.compress import CompressedWriter, compress_bytes, parse_compression
from provision.errors import UsageError


def sample_tree(spool: Spool) -> Tree:
    tree = Tree()
    tree.mkdir_p("bin")
    offset, size = spool.add_bytes(b"#!busybox\n" * 300)
    busybox = Node(NodeKind.FILE, 0o4755, 0, 0, 1_000, offset=offset, size=size)
    tree.put("bin/busybox", busybox)
    tree.put("bin/sh", busybox)
    offset, size = spool.add_bytes("héllo\n".encode())
    tree.put(
        "etc/motd", Node(NodeKind.FILE, 0o644, 1000, 100, 2_000_000_000, offset=offset, size=size)
    )
    tree.put("etc/localtime", Node(NodeKind.SYMLINK, 0o777, target="/usr/share/zoneinfo/UTC"))
    tree.put("dev/null", Node(NodeKind.CHAR, 0o666, rdev=(1, 3)))
    tree.put("run/fifo", Node(NodeKind.FIFO, 0o600))
    tree.put("boot/kernel", Node(NodeKind.FILE, 0o644, offset=0, size=10))
    return tree


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def test_cpio_lists_and_extracts_with_gnu_cpio(spool: Spool, tmp_path: Path) -> None:
    tree = sample_tree(spool)
    out = io.BytesIO()
    write_cpio(tree, spool, out, epoch=1_500_000_000, exclude=["boot/kernel"])
    archive = tmp_path / "root.cpio"
    archive.write_bytes(out.getvalue())
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet", "-F", str(archive)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing]
    assert names == [
        "bin",
        "bin/busybox",
        "bin/sh",
        "boot",
        "dev",
        "dev/null",
        "etc",
        "etc/localtime",
        "etc/motd",
        "run",
        "run/fifo",
    ]
    assert listing[1].startswith("-rwsr-xr-x   2 root")  # setuid kept, two links
    extract = tmp_path / "x"
    extract.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames", "-F", str(archive)],
        check=True,
        cwd=extract,
    )
    a, b = (extract / "bin/busybox").stat(), (extract / "bin/sh").stat()
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (extract / "bin/sh").read_bytes() == b"#!busybox\n" * 300
    motd = (extract / "etc/motd").stat()
    assert (motd.st_uid, motd.st_gid) == (1000, 100)
    assert motd.st_mtime == 1_500_000_000  # clamped to the epoch
    assert os.readlink(extract / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert os.major((extract / "dev/null").stat().st_rdev) == 1
    assert not (extract / "boot/kernel").exists()


def test_tar_reads_back_with_tarfile(spool: Spool) -> None:
    tree = sample_tree(spool)
    out = io.BytesIO()
    size = write_tar(tree, spool, out, epoch=1_500_000_000)
    assert size == len(out.getvalue()) and size % 10240 == 0
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = {m.name: m for m in tar}
        assert members["bin/sh"].islnk() and members["bin/sh"].linkname == "bin/busybox"
        assert members["bin/busybox"].mode == 0o4755
        assert members["etc/motd"].mtime == 1_500_000_000
        assert members["etc/motd"].uid == 1000
        assert members["dev/null"].ischr() and members["dev/null"].devmajor == 1
        assert members["etc/localtime"].issym()
        data = tar.extractfile("etc/motd")
        assert data is not None and data.read() == "héllo\n".encode()


def test_archives_are_deterministic(spool: Spool) -> None:
    outputs = []
    for _ in range(2):
        cpio, tar = io.BytesIO(), io.BytesIO()
        write_cpio(sample_tree(spool), spool, cpio, epoch=7)
        write_tar(sample_tree(spool), spool, tar, epoch=7)
        outputs.append((cpio.getvalue(), tar.getvalue()))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("kind", ["gzip", "zstd", "xz"])
def test_threaded_compression_matches_one_shot_and_round_trips(kind: str) -> None:
    data = os.urandom(1 << 20) + b"compressible " * 300_000
    compression = parse_compression(kind)
    sink = io.BytesIO()
    with CompressedWriter(sink, compression) as writer:
        for start in range(0, len(data), 70_000):
            writer.write(data[start : start + 70_000])
    assert sink.getvalue() == compress_bytes(data, compression)
    packed = sink.getvalue()
    if kind == "gzip":
        assert packed[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # mtime 0, no name
        assert gzip.decompress(packed) == data
    elif kind == "zstd":
        assert zstandard.ZstdDecompressor().decompressobj().decompress(packed) == data
    else:
        assert lzma.decompress(packed) == data
        assert packed[6:8] == b"\x00\x01"  # stream flags: CRC32, what the kernel supports


def test_compression_levels_and_errors() -> None:
    assert str(parse_compression("zstd:19")) == "zstd:19"
    assert str(parse_compression("gzip")) == "gzip:6"
    with pytest.raises(UsageError):
        parse_compression("bzip2")
    with pytest.raises(UsageError):
        parse_compression("gzip:12")


def test_compressor_error_surfaces_to_the_producer() -> None:
    class Broken:
        def write(self, data: bytes) -> int:
            raise OSError("disk full")

    writer = CompressedWriter(Broken(), parse_compression("gzip"))
    with pytest.raises(OSError, match="disk full"):
        for _ in range(64):
            writer.write(os.urandom(1 << 20))
        writer.close()
    writer.abort()
