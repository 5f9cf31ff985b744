"""Streaming, deterministic compression for initrds and archives.

``gzip`` (default, level 6: mtime 0, no file name, OS byte 255), ``zstd`` (level 9, one
thread, content checksum, no content size in the frame header) and ``xz`` (preset 6, CRC32
check, which the kernel's XZ decoder requires). ``NAME:LEVEL`` picks another level
(``zstd:19``). The same input bytes always give the same output bytes.

:class:`CompressedWriter` runs the compressor in a worker thread (zlib, zstd and lzma all
release the GIL), so producing the archive and compressing it overlap; memory stays bounded by
a small queue of 1 MiB chunks.
"""

from __future__ import annotations

import lzma
import queue
import threading
from dataclasses import dataclass
from typing import Protocol

from provision.errors import UsageError

CHUNK = 1 << 20
DEFAULT_LEVELS = {"gzip": 6, "zstd": 9, "xz": 6, "none": 0}
LEVEL_RANGES = {"gzip": (0, 9), "zstd": (1, 22), "xz": (0, 9), "none": (0, 0)}
EXTENSIONS = {"gzip": ".gz", "zstd": ".zst", "xz": ".xz", "none": ""}


@dataclass(frozen=True)
class Compression:
    """A compressor and its level."""

    kind: str = "gzip"
    level: int = DEFAULT_LEVELS["gzip"]

    def __str__(self) -> str:
        return f"{self.kind}:{self.level}" if self.kind != "none" else "none"

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.kind]


def parse_compression(text: str) -> Compression:
    """``gzip``, ``zstd``, ``xz``, ``none``, optionally ``:LEVEL``."""
    kind, _, level_text = text.strip().lower().partition(":")
    if kind not in DEFAULT_LEVELS:
        raise UsageError(f"unknown compression {text!r}", hint="use gzip, zstd or xz (NAME:LEVEL)")
    if not level_text:
        return Compression(kind, DEFAULT_LEVELS[kind])
    low, high = LEVEL_RANGES[kind]
    if not level_text.isdigit() or not low <= int(level_text) <= high:
        raise UsageError(f"compression level for {kind} must be {low}..{high}, not {level_text!r}")
    return Compression(kind, int(level_text))


class Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class _Codec(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _GzipCodec:
    """gzip members written by hand around raw deflate: header with mtime 0, no name."""

    def __init__(self, level: int) -> None:
        import zlib

        self._zlib = zlib
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
        self._crc = 0
        self._size = 0
        xfl = b"\x02" if level == 9 else b"\x04" if level == 1 else b"\x00"
        self._header: bytes | None = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + xfl + b"\xff"

    def _head(self) -> bytes:
        head, self._header = self._header or b"", None
        return head

    def compress(self, data: bytes) -> bytes:
        self._crc = self._zlib.crc32(data, self._crc)
        self._size += len(data)
        return self._head() + self._deflate.compress(data)

    def flush(self) -> bytes:
        tail = self._deflate.flush()
        trailer = self._crc.to_bytes(4, "little") + (self._size & 0xFFFFFFFF).to_bytes(4, "little")
        return self._head() + tail + trailer


class _ZstdCodec:
    def __init__(self, level: int) -> None:
        import zstandard

        self._obj = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=False, threads=0
        ).compressobj()

    def compress(self, data: bytes) -> bytes:
        return bytes(self._obj.compress(data))

    def flush(self) -> bytes:
        return bytes(self._obj.flush())


class _XzCodec:
    def __init__(self, level: int) -> None:
        self._obj = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level)

    def compress(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush()


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def make_codec(compression: Compression) -> _Codec:
    kind, level = compression.kind, compression.level
    if kind == "gzip":
        return _GzipCodec(level)
    if kind == "zstd":
        return _ZstdCodec(level)
    if kind == "xz":
        return _XzCodec(level)
    return _Identity()


_DONE = object()


class CompressedWriter:
    """A write-only stream that compresses into ``sink``; call :meth:`close` to finish.

    With ``threaded`` the compressor runs in a worker thread fed 1 MiB chunks through a
    bounded queue. An error in the worker is raised by the next write or by close."""

    def __init__(self, sink: Sink, compression: Compression, *, threaded: bool = True) -> None:
        self._sink = sink
        self._codec = make_codec(compression)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._error: BaseException | None = None
        self._closed = False
        self._queue: queue.Queue[object] | None = None
        self._thread: threading.Thread | None = None
        if threaded and compression.kind != "none":
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
                out = self._codec.compress(item)  # type: ignore[arg-type]
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
            out = self._codec.compress(chunk)
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
        self._sink.write(self._codec.flush())

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
    """One-shot helper (tests, the benchmark's floor)."""
    codec = make_codec(compression)
    return codec.compress(data) + codec.flush()

