"""A raw disk written straight into an EBS snapshot with the EBS direct APIs (no bucket, no
role): StartSnapshot, PutSnapshotBlock of the 512 KiB blocks that are not all zero (in
parallel, each with its SHA256), CompleteSnapshot with the block count and the linear checksum,
then a bounded wait for ``completed``.

Resumable: the snapshot carries the image digest as a tag; a push that finds a *pending*
snapshot with its digest lists the blocks already there (ListSnapshotBlocks) and sends only the
rest. A *completed* one is used as it is. StartSnapshot's ClientToken comes from the digest and
a nonce of this push: a retried StartSnapshot (every retry resends the same token) gets the same
snapshot, while a later push never gets back a snapshot an earlier one deleted (a token from
the digest alone would, after a failed registration deleted its snapshot).
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from provision.clock import Clock, SystemClock
from provision.providers.aws.clients import AwsClients, AwsError, aws_error, call
from provision.push import PushError, TransferProgress, wait_for
from provision.retry import RetryPolicy
from provision.target import Progress

if TYPE_CHECKING:
    from mypy_boto3_ebs.type_defs import ListSnapshotBlocksResponseTypeDef, TagTypeDef
    from mypy_boto3_ec2.type_defs import FilterTypeDef

BLOCK = 512 * 1024
GIB = 1024 * 1024 * 1024
ZERO_BLOCK = bytes(BLOCK)
TAG_DIGEST = "provision-image-digest"
TAG_FORMAT = (
    "provision-image-format"  # an image is its digest in one format (aws, raw-efi, raw-bios)
)
TOKEN_NAMESPACE = uuid.UUID("6f1f5b7c-3c1e-4d0e-9b7a-2f6a4c1d8e90")
SNAPSHOT_TIMEOUT_MINUTES = (
    60  # a pending snapshot no block was written to for this long is cancelled
)
# A block write also retries "snapshot does not exist", which EBS answers for up to ~2 min
# after StartSnapshot (eventual consistency), for up to 3 minutes.
BLOCK_RETRY_CODES = frozenset({"ResourceNotFoundException"})
BLOCK_RETRY = RetryPolicy(attempts=40, total=180.0, initial=0.5, maximum=10.0)


@dataclass(frozen=True)
class SnapshotUpload:
    snapshot_id: str
    blocks: int  # blocks holding data (the snapshot's ChangedBlocksCount)
    sent: int  # blocks this run sent
    present: int  # blocks already in a resumed snapshot
    reused: bool  # a completed snapshot of this digest was found; nothing was sent


def client_token(digest: str, region: str, nonce: str) -> str:
    """StartSnapshot's ClientToken: from the digest, the region and this push's ``nonce``."""
    return str(uuid.uuid5(TOKEN_NAMESPACE, f"{digest}|{region}|{nonce}"))


def volume_size_gib(size: int) -> int:
    return max(1, -(-size // GIB))


def identity_tags(digest: str, fmt: str, name: str) -> list[TagTypeDef]:
    """The tags that name what a snapshot or an AMI holds: the image digest and its format."""
    return [
        {"Key": TAG_DIGEST, "Value": digest},
        {"Key": TAG_FORMAT, "Value": fmt},
        {"Key": "Name", "Value": name},
    ]


def identity_filters(digest: str, fmt: str) -> list[FilterTypeDef]:
    return [
        {"Name": f"tag:{TAG_DIGEST}", "Values": [digest]},
        {"Name": f"tag:{TAG_FORMAT}", "Values": [fmt]},
    ]


def find_snapshot(clients: AwsClients, digest: str, fmt: str, status: str) -> str | None:
    """The newest snapshot this account owns in the region holding ``digest`` as ``fmt``, in
    ``status``."""
    found = call(
        "to look for snapshots (DescribeSnapshots)",
        lambda: clients.ec2().describe_snapshots(
            OwnerIds=["self"],
            Filters=[*identity_filters(digest, fmt), {"Name": "status", "Values": [status]}],
        ),
    )["Snapshots"]
    found = [s for s in found if s.get("State") == status]
    if not found:
        return None
    return str(max(found, key=lambda s: str(s.get("StartTime", "")))["SnapshotId"])


def list_blocks_page(
    clients: AwsClients, snapshot_id: str, token: str | None
) -> ListSnapshotBlocksResponseTypeDef:
    if token:
        return clients.ebs().list_snapshot_blocks(SnapshotId=snapshot_id, NextToken=token)
    return clients.ebs().list_snapshot_blocks(SnapshotId=snapshot_id)


def list_present_blocks(clients: AwsClients, snapshot_id: str) -> set[int]:
    """The block indices a pending snapshot holds already (every page)."""
    present: set[int] = set()
    token: str | None = None
    while True:
        page = call(
            f"to list the blocks of {snapshot_id} (ListSnapshotBlocks)",
            functools.partial(list_blocks_page, clients, snapshot_id, token),
        )
        present.update(int(b["BlockIndex"]) for b in page.get("Blocks", []) if "BlockIndex" in b)
        token = page.get("NextToken")
        if not token:
            return present


def data_blocks(fd: int, size: int) -> Iterator[int]:
    """Indices of the blocks that hold any allocated extent of the file (holes are skipped
    without reading them; every block when the file system cannot tell)."""
    count = -(-size // BLOCK)
    offset = 0
    following = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            yield from range(following, count)
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        first, last = start // BLOCK, (min(end, size) - 1) // BLOCK
        yield from range(max(first, following), last + 1)
        following = last + 1
        offset = following * BLOCK


def linear_checksum(digests: dict[int, bytes]) -> str:
    """CompleteSnapshot's LINEAR checksum: SHA256 over the blocks' SHA256s in block order."""
    whole = hashlib.sha256()
    for index in sorted(digests):
        whole.update(digests[index])
    return base64.b64encode(whole.digest()).decode()


class BlockWriter:
    """Sends the data blocks of one disk to one snapshot, ``concurrency`` at a time."""

    def __init__(
        self,
        clients: AwsClients,
        snapshot_id: str,
        disk: Path,
        present: set[int],
        progress: TransferProgress,
        clock: Clock,
    ) -> None:
        self.clients = clients
        self.snapshot_id = snapshot_id
        self.disk = disk
        self.present = present
        self.progress = progress
        self.clock = clock
        self.digests: dict[int, bytes] = {}
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.policy = replace(BLOCK_RETRY, clock=clock)

    def write_all(self, concurrency: int) -> dict[int, bytes]:
        size = self.disk.stat().st_size
        fd = os.open(self.disk, os.O_RDONLY)
        try:
            indices = list(data_blocks(fd, size))
            covered = sum(min(BLOCK, size - i * BLOCK) for i in indices)
            self.progress.add(skipped=size - covered)  # the holes, never read
            with ThreadPoolExecutor(
                max_workers=concurrency, thread_name_prefix="ebs-block"
            ) as pool:
                futures: list[Future[None]] = [pool.submit(self._one, fd, size, i) for i in indices]
                try:
                    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                except BaseException:  # Ctrl-C: stop at once, not after every queued block
                    self._stop.set()
                    for future in futures:
                        future.cancel()
                    raise
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    self._stop.set()
                    for future in futures:
                        future.cancel()
                    wait(futures)
                    error = failed[0].exception()
                    assert error is not None
                    raise error
        finally:
            os.close(fd)
        return self.digests

    def _one(self, fd: int, size: int, index: int) -> None:
        if self._stop.is_set():
            return
        data = os.pread(fd, BLOCK, index * BLOCK)
        length = len(data)
        if length < BLOCK:
            data += bytes(BLOCK - length)
        account = min(BLOCK, size - index * BLOCK)
        if data == ZERO_BLOCK:
            self.progress.add(skipped=account)
            return
        digest = hashlib.sha256(data).digest()
        if index not in self.present:
            self._put(index, data, base64.b64encode(digest).decode())
        with self._lock:
            self.digests[index] = digest
            if index not in self.present:
                self.sent += 1
        if index in self.present:
            self.progress.add(present=account)
        else:
            self.progress.add(sent=account)

    def _put(self, index: int, data: bytes, checksum: str) -> None:
        def put() -> object:
            if self._stop.is_set():
                raise PushError("upload stopped")
            return self.clients.ebs().put_snapshot_block(
                SnapshotId=self.snapshot_id,
                BlockIndex=index,
                BlockData=data,
                DataLength=BLOCK,
                Checksum=checksum,
                ChecksumAlgorithm="SHA256",
            )

        call(
            f"to write block {index} of {self.snapshot_id} (PutSnapshotBlock)",
            put,
            also=BLOCK_RETRY_CODES,
            policy=self.policy,
        )


def start_snapshot(
    clients: AwsClients, size: int, digest: str, fmt: str, name: str, nonce: str
) -> str:
    tags = identity_tags(digest, fmt, name)
    token = client_token(digest, clients.region, nonce)  # the same on every retry: one snapshot
    started = call(
        "to start a snapshot (StartSnapshot)",
        lambda: clients.ebs().start_snapshot(
            VolumeSize=volume_size_gib(size),
            Tags=tags,
            Description=f"{name} ({digest})",
            ClientToken=token,
            Timeout=SNAPSHOT_TIMEOUT_MINUTES,
        ),
    )
    return str(started["SnapshotId"])


def complete_snapshot(clients: AwsClients, snapshot_id: str, digests: dict[int, bytes]) -> None:
    """CompleteSnapshot; a refusal after a retry of a call that did complete it counts as done."""
    checksum = linear_checksum(digests)
    try:
        call(
            f"to complete {snapshot_id} (CompleteSnapshot)",
            lambda: clients.ebs().complete_snapshot(
                SnapshotId=snapshot_id,
                ChangedBlocksCount=len(digests),
                Checksum=checksum,
                ChecksumAlgorithm="SHA256",
                ChecksumAggregationMethod="LINEAR",
            ),
            passes={"ValidationException"},
        )
    except ClientError as exc:
        if snapshot_state(clients, snapshot_id) is not None:
            raise aws_error(f"to complete {snapshot_id} (CompleteSnapshot)", exc) from None


def snapshot_state(clients: AwsClients, snapshot_id: str) -> str | None:
    """None once ``completed``; the state while pending; a PushError when it failed."""
    try:
        found = call(
            f"to read the state of {snapshot_id} (DescribeSnapshots)",
            lambda: clients.ec2().describe_snapshots(SnapshotIds=[snapshot_id]),
            passes={"InvalidSnapshot.NotFound"},
        )["Snapshots"]
    except ClientError:
        return "not visible yet"
    state = str(found[0].get("State", "unknown")) if found else "not visible yet"
    if state == "completed":
        return None
    if state == "error":
        raise PushError(
            f"snapshot {snapshot_id} failed", hint=str(found[0].get("StateMessage", "")) or None
        )
    return f"{state} {found[0].get('Progress', '')}".strip() if found else state


def upload_snapshot(
    clients: AwsClients,
    disk: Path,
    digest: str,
    fmt: str,
    name: str,
    *,
    concurrency: int = 16,
    timeout: float = 3600.0,
    progress: Progress | None = None,
    clock: Clock | None = None,
) -> SnapshotUpload:
    """A completed snapshot of ``disk`` (``digest`` as ``fmt``): found, resumed or written."""
    the_clock = clock or SystemClock()
    completed = find_snapshot(clients, digest, fmt, "completed")
    if completed is not None:
        return SnapshotUpload(completed, 0, 0, 0, reused=True)
    size = disk.stat().st_size
    pending = find_snapshot(clients, digest, fmt, "pending")
    if pending is not None:
        snapshot_id = pending
        present = list_present_blocks(clients, snapshot_id)
        if progress is not None:
            progress(f"resuming {snapshot_id}: {len(present)} blocks there already")
    else:
        snapshot_id = start_snapshot(clients, size, digest, fmt, name, uuid.uuid4().hex)
        present = set()
        if progress is not None:
            progress(f"writing {disk.name} into {snapshot_id} ({volume_size_gib(size)} GiB)")
    transfer = TransferProgress(progress, f"snapshot {snapshot_id}", size)
    writer = BlockWriter(clients, snapshot_id, disk, present, transfer, the_clock)
    digests = writer.write_all(concurrency)
    transfer.finish()
    complete_snapshot(clients, snapshot_id, digests)
    wait_for(
        lambda: snapshot_state(clients, snapshot_id),
        what=f"snapshot {snapshot_id} to complete",
        timeout=timeout,
        clock=the_clock,
    )
    return SnapshotUpload(
        snapshot_id, len(digests), writer.sent, len(digests) - writer.sent, reused=False
    )


def delete_snapshot(clients: AwsClients, snapshot_id: str) -> str | None:
    """Delete ``snapshot_id``; None when done, else why not (for the caller's error message)."""
    try:
        call(
            f"to delete {snapshot_id} (DeleteSnapshot)",
            lambda: clients.ec2().delete_snapshot(SnapshotId=snapshot_id),
            passes={"InvalidSnapshot.NotFound"},
        )
    except ClientError:
        return None  # gone already
    except AwsError as exc:
        return exc.message
    return None
