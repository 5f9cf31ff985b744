"""Uploading a file to Cloud Storage with the resumable protocol, resuming across runs.

The session is created by google-cloud-storage (``Blob.create_resumable_upload_session``) and
its URL kept in ``SESSIONS/<key>.json`` until the upload completes; the chunks are PUT over the
storage client's own authorized session (one connection pool for every call) with
``Content-Range`` as the protocol documents, and each 308 answer's ``Range`` says how much the
service holds. A rerun asks the kept session how much it has (``Content-Range: bytes */SIZE``)
and sends only the rest.

The file is read once: each chunk is streamed from the file in 1 MiB blocks as the request goes
out (no copy of the chunk in memory) and its CRC32C extended over the same blocks, then compared
with the one GCS stored. An object already there with the file's size and CRC32C is not sent
again (the file is hashed only when an object of its size is there).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.cloud.storage as storage
import google_crc32c
import requests
from google.api_core import exceptions as gexc

from provision.errors import ProvisionError
from provision.push import TransferProgress
from provision.reconcile.provider import ProviderError, TransientProviderError
from provision.retry import RetryPolicy, parse_retry_after

Progress = Callable[[str], None]
QUANTUM = 256 * 1024  # every chunk but the last is a multiple of this
CHUNK = 100 * 1024 * 1024  # google-cloud-storage's own default (upload_from_filename's)
BLOCK = 1024 * 1024  # what is read from the file, hashed and sent at a time
MIB = 1024 * 1024


@dataclass(frozen=True)
class Uploaded:
    object_name: str
    size: int
    sent: int  # bytes sent by this run (0: the object was there already)
    resumed_from: int  # where this run started (0: from the start)


def file_crc32c(path: Path) -> str:
    """The file's CRC32C as GCS reports it (base64 of the big-endian value); the C-accelerated
    google-crc32c reads at memory speed, several times faster than MD5."""
    checksum = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            checksum.update(chunk)  # type: ignore[no-untyped-call]
    return base64.b64encode(checksum.digest()).decode()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class StoredObject:
    """What GCS reports of an object: its size and CRC32C (base64, as in its metadata)."""

    size: int
    crc32c: str | None


def stat_object(
    client: storage.Client, bucket: str, object_name: str, timeout: float
) -> StoredObject | None:
    """The object's size and CRC32C, or None when there is no such object."""
    try:
        blob = client.bucket(bucket).get_blob(object_name, timeout=timeout)
    except (gexc.GoogleAPICallError, requests.RequestException) as exc:
        raise ProviderError(
            f"looking up gs://{bucket}/{object_name}: {type(exc).__name__}",
            hint=getattr(exc, "message", None) or None,
        ) from None
    return None if blob is None else StoredObject(int(blob.size or 0), blob.crc32c)


class ChunkBody:
    """Bytes ``[start, start + length)`` of an open file as a request body: read in blocks of
    :data:`BLOCK` as the request is sent, each block added to ``checksum`` (a copy of the one
    given: what it was at the chunk's start). Every pass over it reads the same bytes from the
    start, the checksum too: a request sent again (after a credentials refresh) sends the chunk
    again, whole."""

    def __init__(
        self,
        fd: int,
        start: int,
        length: int,
        checksum: Any | None,
        sent: Callable[[int], None] | None = None,
    ) -> None:
        self.fd, self.start, self.length, self.sent = fd, start, length, sent
        self.at_start = checksum
        self.checksum = None if checksum is None else checksum.copy()
        self.pos = 0
        self.ended = False

    def __len__(self) -> int:  # the Content-Length requests sends
        return self.length

    def read(self, _size: int = -1) -> bytes:
        if self.ended:  # a new pass: start over
            self.pos, self.ended = 0, False
            self.checksum = None if self.at_start is None else self.at_start.copy()
        if self.pos >= self.length:
            self.ended = True
            return b""
        block = os.pread(self.fd, min(BLOCK, self.length - self.pos), self.start + self.pos)
        if not block:
            raise ProvisionError(
                f"the file shrank while it was uploaded (at byte {self.start + self.pos})"
            )
        self.pos += len(block)
        if self.checksum is not None:
            self.checksum.update(block)
        if self.sent is not None:
            self.sent(len(block))
        return block


def _received(response: requests.Response) -> int:
    match = re.fullmatch(r"bytes=0-(\d+)", response.headers.get("Range", ""))
    return int(match.group(1)) + 1 if match else 0


class ResumableUpload:
    """One file to ``gs://bucket/object_name``; see the module docstring."""

    def __init__(
        self,
        client: storage.Client,
        bucket: str,
        object_name: str,
        path: Path,
        sessions: Path,
        *,
        chunk: int = CHUNK,
        timeout: float = 120.0,
        policy: RetryPolicy | None = None,
        progress: Progress | None = None,
    ) -> None:
        if chunk % QUANTUM:
            raise ValueError("the chunk size must be a multiple of 256 KiB")
        self.client, self.bucket, self.object_name, self.path = client, bucket, object_name, path
        self.sessions, self.chunk, self.timeout = sessions, chunk, timeout
        self.policy = policy or RetryPolicy(attempts=6, total=300.0)
        self.progress = progress
        self.size = path.stat().st_size
        # the object name comes from the content's digest: name and size pick the session
        key = hashlib.sha256(f"{bucket}/{object_name}/{self.size}".encode()).hexdigest()[:32]
        self.session_file = sessions / f"{key}.json"

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def already_there(self, stored: StoredObject | None) -> bool:
        """``stored`` is this file: the same size and CRC32C (the file is hashed only then)."""
        return (
            stored is not None
            and stored.size == self.size
            and stored.crc32c == file_crc32c(self.path)
        )

    def run(self, *, looked: bool = False, stored: StoredObject | None = None) -> Uploaded:
        """Upload unless the object is there already. ``looked``: the caller has just fetched
        the object's state (``stored``, None when there is none), so it is not asked again."""
        if not looked:
            stored = stat_object(self.client, self.bucket, self.object_name, self.timeout)
        try:
            if self.already_there(stored):
                self._say(
                    f"gs://{self.bucket}/{self.object_name} is there already ({self.size // MIB} MiB, same CRC32C)"
                )
                return Uploaded(self.object_name, self.size, 0, self.size)
            url, offset = self._session()
            start = offset
            if offset:
                self._say(f"resuming the upload at {offset // MIB} of {self.size // MIB} MiB")
            offset = self._send(url, offset)
        except (gexc.GoogleAPICallError, requests.RequestException) as exc:
            raise ProviderError(
                f"uploading to gs://{self.bucket}/{self.object_name}: {type(exc).__name__}",
                hint=getattr(exc, "message", None) or "run again: the upload resumes",
            ) from None
        self.session_file.unlink(missing_ok=True)
        return Uploaded(self.object_name, self.size, self.size - start, start)

    def _session(self) -> tuple[str, int]:
        """A session URL and how much it already holds: the kept one if it is still alive."""
        try:
            kept = json.loads(self.session_file.read_text())
        except (OSError, ValueError):
            kept = None
        if (
            isinstance(kept, dict)
            and kept.get("size") == self.size
            and isinstance(kept.get("url"), str)
        ):
            answer, _ = self._put(kept["url"], f"bytes */{self.size}")
            if answer.status_code == 308:
                return kept["url"], _received(answer)
            if answer.status_code in (200, 201):
                return kept["url"], self.size
        blob = self.client.bucket(self.bucket).blob(self.object_name)
        url = blob.create_resumable_upload_session(
            content_type="application/gzip", size=self.size, timeout=self.timeout
        )
        self.sessions.mkdir(parents=True, exist_ok=True)
        scratch = self.session_file.with_suffix(".tmp")
        scratch.write_text(json.dumps({"url": url, "size": self.size, "object": self.object_name}))
        os.replace(scratch, self.session_file)
        return url, 0

    def _put(
        self, url: str, content_range: str, body: Callable[[], bytes | ChunkBody] = bytes
    ) -> tuple[requests.Response, bytes | ChunkBody]:
        """PUT ``body()`` (a fresh one for each attempt) to the session; the answer and the body
        that was sent."""

        def attempt() -> tuple[requests.Response, bytes | ChunkBody]:
            data = body()
            session: Any = self.client._http  # the storage client's authorized session
            answer: requests.Response = session.put(
                url, data=data, headers={"Content-Range": content_range}, timeout=self.timeout
            )
            if answer.status_code == 429 or answer.status_code >= 500:
                raise TransientProviderError(
                    f"HTTP {answer.status_code} from the upload session",
                    parse_retry_after(answer.headers.get("Retry-After"), 0.0),
                )
            return answer, data

        return self.policy.call(
            attempt,
            retry_on=(TransientProviderError, requests.ConnectionError),
            what="upload chunk",
        )

    def _send(self, url: str, offset: int) -> int:
        """Send from ``offset``, chunk by chunk, each streamed from the file; the file's CRC32C
        is computed over the chunks as they go (hashed again from the file only after a resume
        or when the service kept part of a chunk) and compared with what the service stored."""
        running: Any = google_crc32c.Checksum() if offset == 0 else None  # type: ignore[no-untyped-call]
        meter = TransferProgress(self.progress, f"gs://{self.bucket}/{self.object_name}", self.size)
        if offset:
            meter.add(present=offset)

        def count(sent: int) -> None:
            meter.add(sent=sent)

        fd = os.open(self.path, os.O_RDONLY)
        try:
            while offset < self.size or self.size == 0:
                length = min(self.chunk, self.size - offset)
                answer, body = self._put(
                    url,
                    f"bytes {offset}-{offset + length - 1}/{self.size}"
                    if length
                    else f"bytes */{self.size}",
                    functools.partial(ChunkBody, fd, offset, length, running, count)
                    if length
                    else bytes,
                )
                done = answer.status_code in (200, 201)
                accepted = self.size if done else _received(answer)
                if isinstance(body, ChunkBody) and accepted == offset + length:
                    running = body.checksum
                elif accepted != offset:
                    running = None  # the service kept part of the chunk
                if done:
                    self._check_stored(answer, running)
                    self._say(
                        f"uploaded {self.size // MIB} MiB to gs://{self.bucket}/{self.object_name}"
                    )
                    return self.size
                if answer.status_code != 308:
                    raise ProviderError(
                        f"the upload session answered HTTP {answer.status_code}",
                        hint=answer.text[:300] or None,
                    )
                offset = accepted  # what the service holds (it may keep less than sent)
                self._say(f"uploading: {offset // MIB} of {self.size // MIB} MiB")
        finally:
            os.close(fd)
        return offset

    def _check_stored(self, answer: requests.Response, running: Any) -> None:
        """The stored object's CRC32C is the file's (``running``: the file's, computed while
        sending; None: hash the file)."""
        mine = (
            base64.b64encode(running.digest()).decode()
            if running is not None
            else file_crc32c(self.path)
        )
        stored = answer.json().get("crc32c")
        if stored and stored != mine:
            raise ProvisionError(
                f"gs://{self.bucket}/{self.object_name}: the stored object's CRC32C "
                f"{stored} is not the file's {mine}"
            )
