"""A fixed VHD uploaded as a page blob: 4 MiB pages in parallel, all-zero pages never sent,
resumable, idempotent by the image digest.

The blob's name comes from the digest (``provision-<hex>.vhd``) and its metadata records the
digest and whether the upload finished (``provision_state: complete``, set only after the last
page landed). A rerun finds a complete blob and sends nothing; a partial one (an interrupted
upload) is asked for the page ranges it already holds (Get Page Ranges) and only the pages not
covered are sent. Every page is retried on its own through :mod:`provision.retry` (the SDK's
own retries are off, so there is one policy and it honours ``Retry-After``).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobType, ContainerClient

from provision.providers.azure.errors import AzurePublishError, call_retried, describe
from provision.push import TransferProgress
from provision.retry import RetryLater, RetryPolicy

MIB = 1024 * 1024
PAGE = 4 * MIB  # the largest Put Page Azure accepts
SECTOR = 512
FIXED_DISK = 2
STATE_KEY, DIGEST_KEY = "provision_state", "provision_digest"
COMPLETE = "complete"
ONE_TRY: dict[str, Any] = {
    "retry_total": 0
}  # per request: the SDK's own retries off, whatever the client's

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FixedVhd:
    path: Path
    size: int  # bytes in the file: the disk and the 512-byte footer

    @property
    def disk_size(self) -> int:
        return self.size - SECTOR


def read_fixed_vhd(path: Path) -> FixedVhd:
    """``path`` checked to be what Azure accepts: a fixed VHD whose footer is valid and whose
    disk is a whole number of MiB."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - SECTOR))
            footer = f.read(SECTOR)
    except OSError as exc:
        raise AzurePublishError(f"{path}: cannot read ({exc.strerror})") from exc
    problem = _footer_problem(footer, size)
    if problem:
        raise AzurePublishError(
            f"{path}: not a fixed VHD Azure accepts: {problem}",
            hint="build it with: provision build -f vhd",
        )
    return FixedVhd(path, size)


def _footer_problem(footer: bytes, size: int) -> str:
    if size < SECTOR + MIB or len(footer) != SECTOR or footer[:8] != b"conectix":
        return "no VHD footer at its end"
    checksum = struct.unpack(">I", footer[64:68])[0]
    if ~sum(footer[:64] + b"\0\0\0\0" + footer[68:]) & 0xFFFFFFFF != checksum:
        return "the footer's checksum is wrong"
    disk_type = struct.unpack(">I", footer[60:64])[0]
    if disk_type != FIXED_DISK:
        return f"disk type {disk_type} (Azure needs a fixed VHD, type 2)"
    current = struct.unpack(">Q", footer[48:56])[0]
    if current != size - SECTOR:
        return f"the footer says {current} bytes, the file holds {size - SECTOR} before it"
    if current % MIB:
        return f"{current} bytes is not a whole number of MiB"
    return ""


def blob_name(digest: str) -> str:
    """The blob a digest's VHD is uploaded to."""
    return f"provision-{digest.removeprefix('sha256:')}.vhd"


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (start, end) extents of a possibly sparse file that may hold data; holes unread."""
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole remains
            return
        end = min(size, os.lseek(fd, start, os.SEEK_HOLE))
        yield start, end
        position = end


def plan_pages(vhd: FixedVhd, page: int = PAGE) -> list[tuple[int, int]]:
    """The (offset, length) of every page holding a non-zero byte, in order. Pages are
    ``page`` bytes at multiples of ``page`` (the last one shorter); holes are never read."""
    wanted: set[int] = set()
    with open(vhd.path, "rb") as f:
        fd = f.fileno()
        for start, end in _data_extents(fd, vhd.size):
            for index in range(start // page, (end - 1) // page + 1):
                if index in wanted:
                    continue
                offset = index * page
                if os.pread(fd, min(page, vhd.size - offset), offset).strip(b"\0"):
                    wanted.add(index)
    return [(i * page, min(page, vhd.size - i * page)) for i in sorted(wanted)]


def written_ranges(blob: BlobClient) -> list[tuple[int, int]]:
    """The [start, end) ranges a page blob holds data in (Get Page Ranges)."""
    ranges = [
        (r.start or 0, (r.end or 0) + 1) for r in blob.list_page_ranges(**ONE_TRY) if not r.cleared
    ]
    return sorted(ranges)


def _covered(offset: int, length: int, ranges: Sequence[tuple[int, int]]) -> bool:
    """True when [offset, offset+length) lies inside the union of sorted ``ranges``."""
    reach = offset
    for start, end in ranges:
        if start > reach:
            break
        reach = max(reach, end)
        if reach >= offset + length:
            return True
    return False


@dataclass(frozen=True)
class BlobUpload:
    url: str
    reused: bool  # the complete blob was there: nothing was sent
    pages: int  # pages holding data
    pages_sent: int
    pages_resumed: int  # already written by an earlier, interrupted run
    bytes_sent: int


def upload_vhd(
    container: ContainerClient,
    vhd: FixedVhd,
    digest: str,
    *,
    workers: int = 8,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> BlobUpload:
    """Upload ``vhd`` as the page blob named by ``digest``; see the module docstring."""
    if workers < 1:
        raise AzurePublishError(f"workers must be 1 or more, not {workers}")
    policy = retry or RetryPolicy()
    name = blob_name(digest)
    blob = container.get_blob_client(name)

    def call(what: str, action: Callable[[], Any]) -> Any:
        try:
            return call_retried(policy, what, action)
        except (AzureError, RetryLater) as exc:
            raise AzurePublishError(
                f"{what} failed: {describe(exc)}",
                hint="a rerun sends only the pages not yet written",
            ) from exc

    try:
        props = call(f"reading blob {name}", lambda: blob.get_blob_properties(**ONE_TRY))
    except AzurePublishError as exc:
        if not isinstance(exc.__cause__, ResourceNotFoundError):
            raise
        props = None
    plan = plan_pages(vhd)
    if props is not None and (props.blob_type != BlobType.PAGEBLOB or props.size != vhd.size):
        call(f"deleting blob {name} (not this VHD)", lambda: blob.delete_blob(**ONE_TRY))
        props = None
    if props is not None and props.metadata.get(STATE_KEY) == COMPLETE:
        return BlobUpload(blob.url, True, len(plan), 0, 0, 0)
    if props is None:
        metadata = {DIGEST_KEY: digest.removeprefix("sha256:"), STATE_KEY: "partial"}
        call(
            f"creating page blob {name}",
            lambda: blob.create_page_blob(vhd.size, metadata=metadata, **ONE_TRY),
        )
        have: list[tuple[int, int]] = []
    else:
        have = call(f"listing page ranges of {name}", lambda: written_ranges(blob))
    todo = [(o, n) for o, n in plan if not _covered(o, n, have)]
    meter = TransferProgress(progress, f"uploading {name}", vhd.size)
    sending = set(todo)
    meter.add(
        skipped=vhd.size - sum(n for _, n in plan),
        present=sum(n for o, n in plan if (o, n) not in sending),
    )
    _send_pages(vhd, blob, todo, workers, call, meter)
    meter.finish()
    metadata = {DIGEST_KEY: digest.removeprefix("sha256:"), STATE_KEY: COMPLETE}
    call(f"marking {name} complete", lambda: blob.set_blob_metadata(metadata, **ONE_TRY))
    return BlobUpload(blob.url, False, len(plan), len(todo), len(plan) - len(todo), meter.sent)


def _send_pages(
    vhd: FixedVhd,
    blob: BlobClient,
    todo: Sequence[tuple[int, int]],
    workers: int,
    call: Callable[[str, Callable[[], Any]], Any],
    meter: TransferProgress,
) -> None:
    """Put every page of ``todo``; the first failure stops the rest (and is raised)."""
    stop = threading.Event()

    with open(vhd.path, "rb") as f:
        fd = f.fileno()

        def send(offset: int, length: int) -> None:
            if stop.is_set():
                return
            data = os.pread(fd, length, offset)
            call(
                f"Put Page at {offset}",
                lambda: blob.upload_page(data, offset=offset, length=length, **ONE_TRY),
            )
            meter.add(sent=length)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="azure-page") as pool:
            futures: list[Future[None]] = [pool.submit(send, o, n) for o, n in todo]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()
            except BaseException:
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
