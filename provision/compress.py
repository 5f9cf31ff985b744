"""Every compression provision reads or writes, in one table: :data:`CODECS`.

Each :class:`Codec` declares its name (the CLI and YAML spelling), file suffix, OCI media-type
suffix, magic bytes, its levels, how it compresses and how it decompresses (streaming). The
initrd, the OCI layers, the cloud tarballs, the root loader and the kernel modules all use it.

Compression is reproducible: the same input bytes and level always give the same output bytes.

* ``gzip`` (default level 6): deflate with zlib's default memory level, a header written by
  hand with mtime 0, no file name and OS byte 255 (as Python's ``gzip.GzipFile`` writes it, on
  every Python version);
* ``zstd`` (default level 9): one thread, a content checksum, no content size in the frame;
* ``xz`` (default preset 6): CRC32 check, which the kernel's XZ decoder requires;
* ``none``: the bytes as they are.

``NAME:LEVEL`` picks another level (``zstd:19``).

:class:`CompressedWriter` runs the compressor in a worker thread (zlib, zstd and lzma all
release the GIL), so producing the archive and compressing it overlap; memory stays bounded by
a small queue of 1 MiB chunks.
"""

from __future__ import annotations

import gzip
import io
import lzma
import queue
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

import zstandard

from provision.errors import ProvisionError, UsageError

CHUNK = 1 << 20
#: What a corrupt or truncated compressed stream raises while it is read.
DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    zstandard.ZstdError,
)


class Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class Compressor(Protocol):
    """An incremental compressor: feed :meth:`compress`, finish with :meth:`flush`."""

    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


@dataclass(frozen=True)
class Codec:
    """One compression format and everything provision knows about it."""

    name: str  # the CLI and YAML spelling
    suffix: str  # of a file name: ".gz"
    media_suffix: str | None  # of an OCI layer media type: "+gzip"; None: OCI defines none
    magic: bytes  # the first bytes of every stream; b"" for none
    default_level: int
    levels: tuple[int, int]  # lowest, highest
    new_compressor: Callable[[int], Compressor]
    new_reader: Callable[[BinaryIO], BinaryIO]  # takes ownership: closing it closes the source
    # One-shot decompression when the streaming reader cannot tell a truncated stream.
    decompress_whole: Callable[[bytes], bytes] | None = None

    def compressor(self, level: int | None = None) -> Compressor:
        return self.new_compressor(self.default_level if level is None else level)

    def compress(self, data: bytes, level: int | None = None) -> bytes:
        """``data`` compressed in one go (the same bytes as streaming it)."""
        compressor = self.compressor(level)
        return compressor.compress(data) + compressor.flush()

    def open_reader(self, source: BinaryIO) -> BinaryIO:
        """A stream of ``source``'s decompressed bytes, read as they are needed; reading a
        corrupt stream raises one of :data:`DECOMPRESS_ERRORS`."""
        return self.new_reader(source)

    def decompress(self, data: bytes) -> bytes:
        """``data`` decompressed; a corrupt or truncated stream raises ProvisionError."""
        try:
            if self.decompress_whole is not None:
                return self.decompress_whole(data)
            with self.open_reader(io.BytesIO(data)) as reader:
                return reader.read()
        except DECOMPRESS_ERRORS as exc:
            raise ProvisionError(f"corrupt {self.name} data: {exc}") from None

    def layer_media_type(self) -> str:
        """The OCI layer media type of a tar compressed with this codec."""
        if self.media_suffix is None:
            raise UsageError(
                f"OCI image layers cannot be compressed with {self.name}",
                hint="use gzip, zstd or none",
            )
        return OCI_LAYER_MEDIA_TYPE + self.media_suffix


class _GzipCompressor:
    """gzip members written by hand around raw deflate: header with mtime 0, no name."""

    def __init__(self, level: int) -> None:
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL)
        self._crc = 0
        self._size = 0
        xfl = b"\x02" if level == 9 else b"\x04" if level == 1 else b"\x00"
        self._header: bytes | None = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + xfl + b"\xff"

    def _head(self) -> bytes:
        head, self._header = self._header or b"", None
        return head

    def compress(self, data: bytes) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        return self._head() + self._deflate.compress(data)

    def flush(self) -> bytes:
        tail = self._deflate.flush()
        trailer = self._crc.to_bytes(4, "little") + (self._size & 0xFFFFFFFF).to_bytes(4, "little")
        return self._head() + tail + trailer


class _ZstdCompressor:
    def __init__(self, level: int) -> None:
        self._obj = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=False, threads=0
        ).compressobj()

    def compress(self, data: bytes) -> bytes:
        return bytes(self._obj.compress(data))

    def flush(self) -> bytes:
        return bytes(self._obj.flush())


def _xz_compressor(level: int) -> Compressor:
    return lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level)


class _Identity:
    def __init__(self, _level: int = 0) -> None:
        pass

    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _ClosesItsSource(io.BufferedIOBase):
    """A decompressing reader that closes its source with itself (GzipFile and LZMAFile leave
    a given file object open)."""

    _source: BinaryIO

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._source.close()


class _OwningGzipFile(_ClosesItsSource, gzip.GzipFile):
    def __init__(self, source: BinaryIO) -> None:
        super().__init__(fileobj=source, mode="rb")
        self._source = source


class _OwningLzmaFile(_ClosesItsSource, lzma.LZMAFile):
    def __init__(self, source: BinaryIO) -> None:
        super().__init__(source, "rb")
        self._source = source


def _gzip_reader(source: BinaryIO) -> BinaryIO:
    return cast(BinaryIO, _OwningGzipFile(source))


def _zstd_reader(source: BinaryIO) -> BinaryIO:
    reader = zstandard.ZstdDecompressor().stream_reader(
        source, read_across_frames=True, closefd=True
    )
    return cast(BinaryIO, io.BufferedReader(reader, CHUNK))


def _zstd_decompress(data: bytes) -> bytes:
    """Every frame of ``data``; unlike the stream reader, a truncated last frame is an error."""
    out = []
    while data:
        frame = zstandard.ZstdDecompressor().decompressobj()
        out.append(frame.decompress(data))
        if not frame.eof:
            raise zstandard.ZstdError("the stream ends inside a frame (truncated)")
        data = frame.unused_data
    return b"".join(out)


def _xz_reader(source: BinaryIO) -> BinaryIO:
    return cast(BinaryIO, _OwningLzmaFile(source))


def _plain_reader(source: BinaryIO) -> BinaryIO:
    return source


# gzip starts at level 1: level 0's stored blocks depend on how the input is split into writes.
GZIP = Codec("gzip", ".gz", "+gzip", b"\x1f\x8b", 6, (1, 9), _GzipCompressor, _gzip_reader)
ZSTD = Codec(
    "zstd",
    ".zst",
    "+zstd",
    b"\x28\xb5\x2f\xfd",
    9,
    (1, 22),
    _ZstdCompressor,
    _zstd_reader,
    _zstd_decompress,
)
XZ = Codec("xz", ".xz", None, b"\xfd7zXZ\x00", 6, (0, 9), _xz_compressor, _xz_reader)
NONE = Codec("none", "", "", b"", 0, (0, 0), _Identity, _plain_reader)
#: Every codec, by name.
CODECS: dict[str, Codec] = {codec.name: codec for codec in (GZIP, ZSTD, XZ, NONE)}
OCI_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
# Docker's layer media types end in ".tar.gzip" rather than "+gzip".
_DOCKER_MEDIA_SUFFIXES = {".tar.gzip": GZIP}
#: The file suffixes of compressed files.
COMPRESSED_SUFFIXES = tuple(codec.suffix for codec in CODECS.values() if codec.suffix)


def codec_named(name: str) -> Codec:
    """The codec spelled ``name`` (``gzip``, ``zstd``, ``xz``, ``none``)."""
    codec = CODECS.get(name.strip().lower())
    if codec is None:
        raise UsageError(f"unknown compression {name!r}", hint="use gzip, zstd, xz or none")
    return codec


def codec_for_file_name(name: str) -> Codec:
    """The codec a file name's suffix says (``x.ko.xz`` -> xz); none for any other name."""
    for codec in CODECS.values():
        if codec.suffix and name.endswith(codec.suffix):
            return codec
    return NONE


def codec_for_media_type(media_type: str) -> Codec | None:
    """The codec of a layer media type (OCI ``...tar+zstd``, Docker ``...tar.gzip``, plain
    ``...tar``); None when the type says nothing about compression."""
    for codec in CODECS.values():
        if codec.media_suffix and media_type.endswith(codec.media_suffix):
            return codec
    for suffix, codec in _DOCKER_MEDIA_SUFFIXES.items():
        if media_type.endswith(suffix):
            return codec
    return NONE if media_type.endswith(".tar") else None


MAGIC_LENGTH = max(len(codec.magic) for codec in CODECS.values())


def detect_codec(head: bytes) -> Codec:
    """The codec whose magic bytes start ``head`` (give at least :data:`MAGIC_LENGTH` bytes);
    none when no codec's do."""
    for codec in CODECS.values():
        if codec.magic and head.startswith(codec.magic):
            return codec
    return NONE


def sniff_codec(source: BinaryIO) -> Codec:
    """:func:`detect_codec` on the next bytes of a seekable ``source``, left where it was."""
    position = source.tell()
    head = source.read(MAGIC_LENGTH)
    source.seek(position)
    return detect_codec(head)


@dataclass(frozen=True)
class Compression:
    """A codec (by name) and its level: what ``--compress NAME:LEVEL`` says."""

    kind: str = GZIP.name
    level: int = GZIP.default_level

    def __str__(self) -> str:
        return f"{self.kind}:{self.level}" if self.kind != NONE.name else NONE.name

    @property
    def codec(self) -> Codec:
        return CODECS[self.kind]

    @property
    def extension(self) -> str:
        return self.codec.suffix


def parse_compression(text: str) -> Compression:
    """``gzip``, ``zstd``, ``xz``, ``none``, optionally ``:LEVEL``."""
    kind, _, level_text = text.strip().lower().partition(":")
    codec = CODECS.get(kind)
    if codec is None:
        raise UsageError(f"unknown compression {text!r}", hint="use gzip, zstd or xz (NAME:LEVEL)")
    if not level_text:
        return Compression(codec.name, codec.default_level)
    low, high = codec.levels
    if not level_text.isdigit() or not low <= int(level_text) <= high:
        raise UsageError(f"compression level for {kind} must be {low}..{high}, not {level_text!r}")
    return Compression(codec.name, int(level_text))


def make_compressor(compression: Compression) -> Compressor:
    """A compressor for ``compression`` (its codec at its level)."""
    return compression.codec.compressor(compression.level)


_DONE = object()


class CompressedWriter:
    """A write-only stream that compresses into ``sink``; call :meth:`close` to finish.

    With ``threaded`` the compressor runs in a worker thread fed 1 MiB chunks through a
    bounded queue. An error in the worker is raised by the next write or by close."""

    def __init__(self, sink: Sink, compression: Compression, *, threaded: bool = True) -> None:
        self._sink = sink
        self._compressor = make_compressor(compression)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._error: BaseException | None = None
        self._closed = False
        self._queue: queue.Queue[object] | None = None
        self._thread: threading.Thread | None = None
        if threaded and compression.codec is not NONE:
            self._queue = queue.Queue(maxsize=4)
            self._thread = threading.Thread(target=self._work, name="compress", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue  # drain so the producer never blocks
            try:
                out = self._compressor.compress(item)  # type: ignore[arg-type]
                if out:
                    self._sink.write(out)
            except BaseException as exc:  # noqa: BLE001 - handed to the producer
                self._error = exc

    def write(self, data: bytes) -> int:
        if self._error is not None:
            raise self._error
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= CHUNK:
            self._emit()
        return len(data)

    def _emit(self) -> None:
        if not self._buffer:
            return
        chunk = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        self._buffer, self._buffered = [], 0
        if self._queue is not None:
            self._queue.put(chunk)
        else:
            out = self._compressor.compress(chunk)
            if out:
                self._sink.write(out)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._emit()
        if self._queue is not None and self._thread is not None:
            self._queue.put(_DONE)
            self._thread.join()
        if self._error is not None:
            raise self._error
        self._sink.write(self._compressor.flush())

    def abort(self) -> None:
        """Stop the worker without finishing the stream (after a failure)."""
        if self._closed:
            return
        self._closed = True
        self._buffer = []
        if self._queue is not None and self._thread is not None:
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(_DONE)
            self._thread.join()

    def __enter__(self) -> CompressedWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def compress_bytes(data: bytes, compression: Compression) -> bytes:
    """``data`` compressed in one go (the same bytes as :class:`CompressedWriter` writes)."""
    return compression.codec.compress(data, compression.level)
