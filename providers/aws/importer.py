"""``--method import``: the raw disk uploaded to S3 (multipart, parallel, resumable), then
ImportSnapshot (needs the ``vmimport`` service role), a bounded wait that reports the task's own
status message as soon as it fails, and the snapshot tagged with the image digest.

The object is ``provision/<digest hex>.raw`` in ``--bucket``: an interrupted upload is found
again (ListMultipartUploads), its parts listed (ListParts) and only the missing or different
ones (by MD5, which is each part's ETag) are sent; an object already there of the right size
is not sent again. The object is deleted once the snapshot exists.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from provision.clock import Clock, SystemClock
from provision.providers.aws.clients import AwsClients, aws_error, call
from provision.providers.aws.ebs import TAG_DIGEST, TOKEN_NAMESPACE, SnapshotUpload, identity_tags
from provision.push import PushError, TransferProgress, wait_for
from provision.target import Progress

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MIB = 1024 * 1024
MIN_PART = 8 * MIB
MAX_PARTS = 10_000
PART_WORKERS = 8  # parts in flight (each is in memory while it is sent)


def part_size(size: int) -> int:
    """8 MiB, or larger (a whole MiB) when the disk needs more than 10,000 parts."""
    needed = -(-size // MAX_PARTS)
    return max(MIN_PART, -(-needed // MIB) * MIB)


def object_key(digest: str, fmt: str) -> str:
    return f"provision/{digest.split(':', 1)[-1]}-{fmt}.raw"


def find_upload(clients: AwsClients, bucket: str, key: str) -> str | None:
    uploads = call(
        f"to list the uploads in s3://{bucket} (ListMultipartUploads)",
        lambda: clients.s3().list_multipart_uploads(Bucket=bucket, Prefix=key),
    ).get("Uploads", [])
    mine = [u for u in uploads if u.get("Key") == key and u.get("UploadId")]
    return str(mine[-1]["UploadId"]) if mine else None


def list_parts(clients: AwsClients, bucket: str, key: str, upload_id: str) -> dict[int, str]:
    """Part number -> ETag (without quotes) of the parts an upload holds, every page."""
    parts: dict[int, str] = {}
    marker = 0
    while True:
        page = call(
            f"to list the parts of s3://{bucket}/{key} (ListParts)",
            functools.partial(
                clients.s3().list_parts,
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumberMarker=marker,
            ),
        )
        for part in page.get("Parts", []):
            parts[int(part["PartNumber"])] = str(part.get("ETag", "")).strip('"')
        if not page.get("IsTruncated"):
            return parts
        marker = int(page.get("NextPartNumberMarker", 0))


def object_size(clients: AwsClients, bucket: str, key: str) -> int | None:
    try:
        return int(
            call(
                f"to look for s3://{bucket}/{key} (HeadObject)",
                lambda: clients.s3().head_object(Bucket=bucket, Key=key),
                passes={"404", "NoSuchKey", "NotFound"},
            )["ContentLength"]
        )
    except ClientError:
        return None


def upload_disk(
    clients: AwsClients,
    disk: Path,
    bucket: str,
    key: str,
    digest: str,
    *,
    concurrency: int,
    progress: Progress | None,
) -> None:
    """``disk`` as the object ``key`` (multipart, resumable)."""
    size = disk.stat().st_size
    if object_size(clients, bucket, key) == size:
        if progress is not None:
            progress(f"s3://{bucket}/{key} is there already")
        return
    s3 = clients.s3()
    upload_id = find_upload(clients, bucket, key)
    present: dict[int, str] = {}
    if upload_id is not None:
        present = list_parts(clients, bucket, key, upload_id)
        if progress is not None:
            progress(
                f"resuming the upload to s3://{bucket}/{key}: {len(present)} parts there already"
            )
    else:
        upload_id = call(
            f"to start the upload to s3://{bucket} (CreateMultipartUpload)",
            lambda: s3.create_multipart_upload(
                Bucket=bucket, Key=key, Metadata={TAG_DIGEST: digest}
            ),
        )["UploadId"]
    chunk = part_size(size)
    transfer = TransferProgress(progress, f"s3://{bucket}/{key}", size)
    fd = os.open(disk, os.O_RDONLY)

    def send(number: int) -> CompletedPartTypeDef:
        data = os.pread(fd, chunk, (number - 1) * chunk)
        md5 = hashlib.md5(data, usedforsecurity=False)
        if present.get(number) == md5.hexdigest():
            transfer.add(present=len(data))
            return {"PartNumber": number, "ETag": f'"{md5.hexdigest()}"'}
        etag = call(
            f"to upload part {number} of s3://{bucket}/{key} (UploadPart)",
            lambda: s3.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=str(upload_id),
                PartNumber=number,
                Body=data,
                ContentMD5=base64.b64encode(md5.digest()).decode(),
            ),
        )["ETag"]
        transfer.add(sent=len(data))
        return {"PartNumber": number, "ETag": str(etag)}

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, PART_WORKERS))) as pool:
            parts = list(pool.map(send, range(1, max(1, -(-size // chunk)) + 1)))
    finally:
        os.close(fd)
    transfer.finish()
    what = f"to complete s3://{bucket}/{key} (CompleteMultipartUpload)"
    try:
        call(
            what,
            lambda: s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=str(upload_id), MultipartUpload={"Parts": parts}
            ),
            passes={"NoSuchUpload"},
        )
    except ClientError as exc:  # a retry of a completion that went through
        if object_size(clients, bucket, key) != size:
            raise aws_error(what, exc) from None


def import_task_state(clients: AwsClients, task_id: str) -> tuple[str | None, str]:
    """(None, snapshot id) once completed; (status, "") while it runs; a PushError with the
    task's own status message as soon as it failed."""
    tasks = call(
        f"to read the import task {task_id} (DescribeImportSnapshotTasks)",
        lambda: clients.ec2().describe_import_snapshot_tasks(ImportTaskIds=[task_id]),
    ).get("ImportSnapshotTasks", [])
    detail: dict[str, Any] = dict(tasks[0].get("SnapshotTaskDetail", {})) if tasks else {}
    status = str(detail.get("Status", "not visible yet"))
    message = str(detail.get("StatusMessage", ""))
    if status == "completed" and detail.get("SnapshotId"):
        return None, str(detail["SnapshotId"])
    if status in ("deleting", "deleted", "error") or message.lower().startswith(
        ("clienterror", "servererror")
    ):
        raise PushError(f"the import task {task_id} failed ({status})", hint=message or None)
    progress = detail.get("Progress")
    return f"{status} {message} {progress + '%' if progress else ''}".strip(), ""


def import_snapshot(
    clients: AwsClients,
    disk: Path,
    digest: str,
    fmt: str,
    name: str,
    *,
    bucket: str,
    concurrency: int,
    timeout: float,
    progress: Progress | None = None,
    clock: Clock | None = None,
) -> SnapshotUpload:
    """A completed snapshot of ``disk`` made by ImportSnapshot from ``s3://bucket/...``."""
    the_clock = clock or SystemClock()
    key = object_key(digest, fmt)
    upload_disk(clients, disk, bucket, key, digest, concurrency=concurrency, progress=progress)
    token = str(uuid.uuid5(TOKEN_NAMESPACE, f"import|{digest}|{clients.region}|{uuid.uuid4().hex}"))
    task_id = call(
        "to import the snapshot (ImportSnapshot)",
        lambda: clients.ec2().import_snapshot(
            Description=f"{name} ({digest})",
            DiskContainer={"Format": "RAW", "UserBucket": {"S3Bucket": bucket, "S3Key": key}},
            ClientToken=token,
            TagSpecifications=[
                {
                    "ResourceType": "import-snapshot-task",
                    "Tags": [{"Key": TAG_DIGEST, "Value": digest}],
                }
            ],
        ),
    )["ImportTaskId"]
    if progress is not None:
        progress(f"importing s3://{bucket}/{key} ({task_id})")
    found: list[str] = []

    def check() -> str | None:
        status, snapshot = import_task_state(clients, str(task_id))
        if status is None:
            found.append(snapshot)
        return status

    wait_for(
        check,
        what=f"the import task {task_id}",
        timeout=timeout,
        clock=the_clock,
        interval=2.0,
        max_interval=30.0,
    )
    snapshot_id = found[0]
    call(
        f"to tag {snapshot_id} (CreateTags)",
        lambda: clients.ec2().create_tags(
            Resources=[snapshot_id], Tags=identity_tags(digest, fmt, name)
        ),
    )
    call(
        f"to delete s3://{bucket}/{key} (DeleteObject)",
        lambda: clients.s3().delete_object(Bucket=bucket, Key=key),
    )
    return SnapshotUpload(snapshot_id, 0, 0, 0, reused=False)
