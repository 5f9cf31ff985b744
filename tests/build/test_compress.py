"""The codec table (provision/compress.py): every codec round-trips, one-shot and streaming,
is found by its magic bytes, its file suffix and its OCI media type, compresses reproducibly,
and a corrupt stream is a clear error wherever it is read."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import random
import tarfile
from pathlib import Path

import pytest
import zstandard

from provision.assemble.layers import LayerOrigin, apply_layer
from provision.assemble.tree import Spool, Tree
from provision.compress import (
    CODECS,
    GZIP,
    MAGIC_LENGTH,
    NONE,
    XZ,
    ZSTD,
    Codec,
    CompressedWriter,
    Compression,
    codec_for_file_name,
    codec_for_media_type,
    codec_named,
    detect_codec,
    sniff_codec,
)
from provision.errors import HostileInputError, ProvisionError, UsageError
from provision.oci.imagebuild import tar_layer_from_entries

DATA = random.Random(3).randbytes(200_000) + b"compressible text " * 100_000
EVERY = sorted(CODECS)


def test_the_table_names_every_codec_once() -> None:
    assert EVERY == ["gzip", "none", "xz", "zstd"]
    assert [CODECS[name].name for name in EVERY] == EVERY
    suffixes = [c.suffix for c in CODECS.values()]
    assert len(set(suffixes)) == len(suffixes)
    magics = [c.magic for c in CODECS.values() if c.magic]
    assert len(set(magics)) == len(magics) == 3
    for codec in CODECS.values():
        low, high = codec.levels
        assert low <= codec.default_level <= high


@pytest.mark.parametrize("name", EVERY)
def test_each_codec_round_trips_one_shot_and_streaming(name: str) -> None:
    codec = codec_named(name)
    for level in sorted({*codec.levels, codec.default_level}):
        packed = codec.compress(DATA, level)
        assert codec.decompress(packed) == DATA
        with codec.open_reader(io.BytesIO(packed)) as reader:
            pieces = []
            while piece := reader.read(65_536):
                pieces.append(piece)
        assert b"".join(pieces) == DATA
        # Streaming in odd pieces gives the same bytes as one shot.
        sink = io.BytesIO()
        with CompressedWriter(sink, Compression(name, level)) as writer:
            for start in range(0, len(DATA), 33_333):
                writer.write(DATA[start : start + 33_333])
        assert sink.getvalue() == packed, (name, level)
    if codec is not NONE:
        assert len(codec.compress(DATA)) < len(DATA) * 0.8


@pytest.mark.parametrize("name", EVERY)
def test_compression_is_reproducible_and_readable_by_the_reference_decoders(name: str) -> None:
    codec = codec_named(name)
    packed = codec.compress(DATA)
    assert packed == codec.compress(DATA)
    if codec is GZIP:
        # mtime 0, no file name, OS 255 (unknown), on every Python version.
        assert packed[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        assert gzip.decompress(packed) == DATA
        # the same deflate stream as Python's gzip module at the same level
        assert packed[10:] == gzip.compress(DATA, compresslevel=6, mtime=0)[10:]
    elif codec is ZSTD:
        frame = zstandard.get_frame_parameters(packed)
        assert frame.has_checksum and frame.content_size == zstandard.CONTENTSIZE_UNKNOWN
        assert zstandard.ZstdDecompressor().decompressobj().decompress(packed) == DATA
    elif codec is XZ:
        assert packed[6:8] == b"\x00\x01"  # stream flags: CRC32, what the kernel supports
        assert lzma.decompress(packed) == DATA
    else:
        assert packed == DATA


@pytest.mark.parametrize("name", EVERY)
def test_detection_by_magic_bytes(name: str) -> None:
    codec = codec_named(name)
    packed = codec.compress(b"#!/bin/sh\necho hello\n" * 10)
    assert detect_codec(packed[:MAGIC_LENGTH]) is codec
    stream = io.BytesIO(b"xyz" + packed)
    stream.read(3)
    assert sniff_codec(stream) is codec
    assert stream.tell() == 3  # left where it was
    assert detect_codec(b"") is NONE
    assert detect_codec(b"\x1f") is NONE  # half a gzip magic is not gzip


def test_file_names_and_media_types_map_to_codecs() -> None:
    assert codec_for_file_name("virtio_blk.ko.xz") is XZ
    assert codec_for_file_name("disk.img.tar.gz") is GZIP
    assert codec_for_file_name("x.ko.zst") is ZSTD
    assert codec_for_file_name("x.ko") is NONE
    layer = "application/vnd.oci.image.layer.v1.tar"
    assert codec_for_media_type(layer) is NONE
    assert codec_for_media_type(layer + "+gzip") is GZIP
    assert codec_for_media_type(layer + "+zstd") is ZSTD
    assert (
        codec_for_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd") is ZSTD
    )
    assert codec_for_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip") is GZIP
    assert codec_for_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip") is GZIP
    assert codec_for_media_type("application/octet-stream") is None
    assert [c.layer_media_type() for c in (GZIP, ZSTD, NONE)] == [
        layer + "+gzip",
        layer + "+zstd",
        layer,
    ]
    with pytest.raises(UsageError, match="xz"):
        XZ.layer_media_type()
    with pytest.raises(UsageError, match="bzip2"):
        codec_named("bzip2")


@pytest.mark.parametrize("codec", [GZIP, ZSTD, XZ], ids=lambda c: c.name)
def test_a_corrupt_stream_is_a_provision_error(codec: Codec) -> None:
    packed = bytearray(codec.compress(DATA))
    truncated = bytes(packed[: len(packed) // 2])
    with pytest.raises(ProvisionError, match=f"corrupt {codec.name} data"):
        codec.decompress(truncated)
    packed[len(packed) // 2] ^= 0xFF
    with pytest.raises(ProvisionError, match=f"corrupt {codec.name} data"):
        codec.decompress(bytes(packed))


def test_zstd_reads_across_frames() -> None:
    packed = ZSTD.compress(b"first ") + ZSTD.compress(b"second")
    assert ZSTD.decompress(packed) == b"first second"


@pytest.mark.parametrize("codec", [GZIP, ZSTD, XZ], ids=lambda c: c.name)
def test_a_corrupt_compressed_layer_is_refused_with_a_message(codec: Codec, tmp_path: Path) -> None:
    layer = tar_layer_from_entries([("data", None), ("data/blob", os.urandom(300_000))])
    packed = bytearray(codec.compress(layer))
    packed[len(packed) // 2] ^= 0xFF
    stream = codec.open_reader(io.BytesIO(bytes(packed)))
    with pytest.raises(HostileInputError, match="cannot read the layer|not a valid tar"):
        apply_layer(
            Tree(), stream, Spool(tmp_path / "spool"), LayerOrigin("x.test/a:1", "sha256:00")
        )


def test_closing_a_reader_closes_its_source(tmp_path: Path) -> None:
    for codec in CODECS.values():
        path = tmp_path / f"blob{codec.suffix}"
        path.write_bytes(codec.compress(DATA))
        source = open(path, "rb")  # noqa: SIM115 - the reader owns it
        with codec.open_reader(source) as reader:
            assert reader.read(10) == DATA[:10]
        assert source.closed, codec.name


def test_gcp_tarball_is_gzip_from_the_table(tmp_path: Path) -> None:
    from provision.builders.cloud import GCP_MEMBER, write_gcp_tarball

    raw = tmp_path / "disk.raw"
    raw.write_bytes(DATA)
    out = tmp_path / "disk.img.tar.gz"
    write_gcp_tarball(raw, out, 1_600_000_000)
    packed = out.read_bytes()
    assert detect_codec(packed) is GZIP and packed[4:10] == b"\0\0\0\0\0\xff"
    with tarfile.open(fileobj=io.BytesIO(GZIP.decompress(packed))) as tar:
        (member,) = tar.getmembers()
        assert member.name == GCP_MEMBER and member.mtime == 1_600_000_000
