"""The push tests' AWS stand-in: moto (in server mode on 127.0.0.1, as in aws_testkit.py) with
its EBS direct, AMI and ImportSnapshot handlers extended as AWS documents them, behind a WSGI
layer that counts requests and injects faults per action. Nothing inside boto3 is replaced."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import pytest
from aws_testkit import Moto
from moto.server import ThreadedMotoServer

EBS_BLOCK = 512 * 1024
_PUSH_EXTENSION_INSTALLED = False


def extend_moto_for_push() -> None:
    """Give moto's EBS direct and AMI handlers the behaviour AWS documents where moto 5.2 lacks
    it (test side only; boto3 is untouched):

    * StartSnapshot honours ClientToken (the same token returns the same snapshot) and the EC2
      snapshot it makes stays ``pending`` until CompleteSnapshot (moto: ``completed`` at once);
    * PutSnapshotBlock refuses a block whose SHA256 does not match its Checksum, a DataLength
      other than 524288, or a snapshot that is not pending;
    * ListSnapshotBlocks returns integer indices in order, paged by MaxResults / NextToken;
    * CompleteSnapshot checks ChangedBlocksCount and the LINEAR checksum (SHA256 over the
      blocks' SHA256s in index order), then marks the snapshot ``completed``;
    * RegisterImage keeps Architecture, RootDeviceName, BlockDeviceMappings (the snapshot must
      exist and be completed), VirtualizationType, EnaSupport, SriovNetSupport, BootMode,
      ImdsSupport, TpmSupport and TagSpecifications (moto keeps only Name and Description);
    * CopyImage honours ClientToken and TagSpecifications and copies those fields;
    * ImportSnapshot / DescribeImportSnapshotTasks (moto: HTTP 500) exist: the S3 object must
      exist; the task is ``active`` on the first describe and ``completed`` on the next, with a
      snapshot whose EBS blocks are the object's non-zero 512 KiB blocks (GetSnapshotBlock reads
      them back). A disk without an MBR boot signature fails validation as EC2 reports it:
      status ``deleted``, ``ClientError: Disk validation failed [...]``.
    """
    global _PUSH_EXTENSION_INSTALLED
    if _PUSH_EXTENSION_INSTALLED:
        return
    from moto.core.exceptions import JsonRESTError
    from moto.ebs.models import EBSBackend, EBSSnapshot
    from moto.ebs.responses import EBSResponse
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.amis import Ami
    from moto.ec2.responses.amis import AmisResponse
    from moto.ec2.utils import random_ami_id

    tokens: dict[tuple[str, str, str], str] = {}

    def ec2_snapshot(backend: EBSBackend, snapshot_id: str) -> Any:
        return backend.ec2_backend.snapshots.get(snapshot_id)

    def start_snapshot(self: EBSResponse) -> str:
        params = json.loads(self.body)
        key = (self.current_account, self.region, str(params.get("ClientToken") or uuid.uuid4()))
        backend = self.ebs_backend
        known = tokens.get(key)
        if known is not None and known in backend.snapshots:
            return json.dumps(backend.snapshots[known].to_json())
        snapshot = backend.start_snapshot(
            volume_size=params.get("VolumeSize"),
            tags=params.get("Tags"),
            description=params.get("Description"),
        )
        ec2_snapshot(backend, snapshot.snapshot_id).status = "pending"
        tokens[key] = snapshot.snapshot_id
        return json.dumps(snapshot.to_json())

    original_put = EBSResponse.put_snapshot_block

    def put_snapshot_block(self: EBSResponse) -> Any:
        snapshot_id = self.parsed_url.path.split("/")[-3]
        headers = {k.lower(): v for k, v in self.headers.items()}
        snapshot = self.ebs_backend.snapshots.get(snapshot_id)
        if snapshot is None:
            raise JsonRESTError(
                "ResourceNotFoundException", f"The snapshot {snapshot_id} does not exist."
            )
        if snapshot.status != "pending":
            raise JsonRESTError(
                "ValidationException", f"The snapshot {snapshot_id} is not pending."
            )
        if headers.get("x-amz-data-length") != str(EBS_BLOCK) or len(self.body) != EBS_BLOCK:
            raise JsonRESTError("ValidationException", "DataLength must be 524288.")
        expected = base64.b64encode(hashlib.sha256(self.body).digest()).decode()
        if (
            headers.get("x-amz-checksum-algorithm") != "SHA256"
            or headers.get("x-amz-checksum") != expected
        ):
            raise JsonRESTError(
                "ValidationException", "The checksum does not match the block data."
            )
        return original_put(self)

    def list_snapshot_blocks(self: EBSResponse) -> str:
        snapshot_id = self.path.split("/")[-2]
        snapshot = self.ebs_backend.snapshots.get(snapshot_id)
        if snapshot is None:
            raise JsonRESTError(
                "ResourceNotFoundException", f"The snapshot {snapshot_id} does not exist."
            )
        query = parse_qs(self.parsed_url.query)
        limit = int(query.get("maxResults", ["100"])[0])
        start = int(query.get("pageToken", ["0"])[0])
        indices = sorted(int(i) for i in snapshot.blocks)
        page = indices[start : start + limit]
        body: dict[str, Any] = {
            "Blocks": [
                {"BlockIndex": i, "BlockToken": snapshot.blocks[str(i)].block_token} for i in page
            ],
            "VolumeSize": snapshot.volume_size,
            "BlockSize": EBS_BLOCK,
        }
        if start + limit < len(indices):
            body["NextToken"] = str(start + limit)
        return json.dumps(body)

    def complete_snapshot(self: EBSResponse) -> Any:
        snapshot_id = self.parsed_url.path.split("/")[-1]
        snapshot: EBSSnapshot | None = self.ebs_backend.snapshots.get(snapshot_id)
        if snapshot is None:
            raise JsonRESTError(
                "ResourceNotFoundException", f"The snapshot {snapshot_id} does not exist."
            )
        headers = {k.lower(): v for k, v in self.headers.items()}
        if headers.get("x-amz-changedblockscount") != str(len(snapshot.blocks)):
            raise JsonRESTError(
                "ValidationException",
                f"ChangedBlocksCount {headers.get('x-amz-changedblockscount')} "
                f"but {len(snapshot.blocks)} blocks were written.",
            )
        if "x-amz-checksum" in headers:
            whole = hashlib.sha256()
            for index in sorted(int(i) for i in snapshot.blocks):
                whole.update(base64.b64decode(snapshot.blocks[str(index)].checksum))
            if (
                headers.get("x-amz-checksum-aggregation-method") != "LINEAR"
                or headers["x-amz-checksum"] != base64.b64encode(whole.digest()).decode()
            ):
                raise JsonRESTError(
                    "ValidationException", "The aggregated checksum does not match."
                )
        snapshot.status = "completed"
        ec2_snapshot(self.ebs_backend, snapshot_id).status = "completed"
        return 202, {"status": 202}, json.dumps({"Status": "completed"})

    class RegisteredAmi(Ami):  # type: ignore[misc]
        __module__ = "moto.ec2.models.amis"  # moto's model metaclass reads the service from it
        fields: dict[str, Any]

        @property
        def block_device_mappings(self) -> list[dict[str, Any]]:
            return list(self.fields["BlockDeviceMappings"])

    def make_ami(
        backend: Any, name: str, description: str, fields: dict[str, Any], tags: Iterable[Any]
    ) -> Any:
        ami = RegisteredAmi(
            backend,
            random_ami_id(),
            name=name,
            description=description,
            architecture=fields.get("Architecture") or "x86_64",
            virtualization_type=fields.get("VirtualizationType") or "paravirtual",
            root_device_name=fields.get("RootDeviceName") or "/dev/sda1",
            root_device_type="ebs",
            sriov=fields.get("SriovNetSupport") or "",
            boot_mode=fields.get("BootMode") or "",
        )
        ami.fields = fields
        ami.ena_support = fields.get("EnaSupport")
        ami.imds_support = fields.get("ImdsSupport")
        ami.tpm_support = fields.get("TpmSupport")
        ami.sriov_net_support = fields.get("SriovNetSupport")
        backend.amis[ami.id] = ami
        for spec in tags:
            if spec.get("ResourceType") == "image":
                backend.create_tags([ami.id], {t["Key"]: t["Value"] for t in spec.get("Tags", [])})
        for mapping in fields["BlockDeviceMappings"]:
            snapshot = backend.snapshots.get(mapping.get("Ebs", {}).get("SnapshotId"))
            if snapshot is not None:
                snapshot.from_ami = ami.id
        return ami

    def register_image(self: AmisResponse) -> Any:
        from moto.core.responses import ActionResult

        name = self._get_param("Name")
        if any(a.name == name for a in self.ec2_backend.amis.values()):
            raise EC2ClientError(
                "InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI"
            )
        mappings = self._get_param("BlockDeviceMappings", [])
        for mapping in mappings:
            snapshot_id = mapping.get("Ebs", {}).get("SnapshotId")
            snapshot = self.ec2_backend.snapshots.get(snapshot_id)
            if snapshot_id and (snapshot is None or snapshot.status != "completed"):
                raise EC2ClientError(
                    "InvalidSnapshot.NotFound" if snapshot is None else "IncorrectState",
                    f"snapshot {snapshot_id} is not a completed snapshot",
                )
        fields = {
            key: self._get_param(key)
            for key in (
                "Architecture",
                "RootDeviceName",
                "VirtualizationType",
                "EnaSupport",
                "SriovNetSupport",
                "BootMode",
                "ImdsSupport",
                "TpmSupport",
            )
        }
        fields["BlockDeviceMappings"] = mappings
        ami = make_ami(
            self.ec2_backend,
            name,
            self._get_param("Description", ""),
            fields,
            self._get_param("TagSpecifications", []),
        )
        return ActionResult({"ImageId": ami.id})

    copy_tokens: dict[tuple[str, str, str], str] = {}

    def copy_image(self: AmisResponse) -> Any:
        from moto.core.responses import ActionResult
        from moto.ec2.models import ec2_backends

        token = self._get_param("ClientToken")
        key = (self.current_account, self.region, str(token or uuid.uuid4()))
        if key in copy_tokens and copy_tokens[key] in self.ec2_backend.amis:
            return ActionResult({"ImageId": copy_tokens[key]})
        source_region = self._get_param("SourceRegion")
        source = ec2_backends[self.current_account][source_region].amis.get(
            self._get_param("SourceImageId")
        )
        if source is None:
            raise EC2ClientError("InvalidAMIID.NotFound", "The image id does not exist")
        fields = dict(getattr(source, "fields", {"BlockDeviceMappings": []}))
        fields["BlockDeviceMappings"] = [dict(m) for m in fields["BlockDeviceMappings"]]
        ami = make_ami(
            self.ec2_backend,
            self._get_param("Name") or source.name,
            self._get_param("Description", ""),
            fields,
            self._get_param("TagSpecifications", []),
        )
        for mapping in fields["BlockDeviceMappings"]:  # the copy has its own snapshot in its region
            if "Ebs" in mapping:
                mapping["Ebs"] = {**mapping["Ebs"], "SnapshotId": ami.ebs_snapshot.id}
        copy_tokens[key] = ami.id
        return ActionResult({"ImageId": ami.id})

    from moto.ec2.responses import EC2Response

    tasks: dict[str, dict[str, Any]] = {}

    def import_snapshot(self: EC2Response) -> Any:
        from moto.core.responses import ActionResult
        from moto.s3.models import s3_backends

        container = self._get_param("DiskContainer", {})
        bucket, key = (
            container.get("UserBucket", {}).get("S3Bucket"),
            container.get("UserBucket", {}).get("S3Key"),
        )
        try:
            obj = s3_backends[self.current_account]["aws"].get_object(bucket, key)
        except Exception:  # moto raises its own S3 errors for a missing bucket
            obj = None
        if obj is None:
            raise EC2ClientError(
                "InvalidParameter", f"The given S3 object is not found: s3://{bucket}/{key}"
            )
        task_id = f"import-snap-{uuid.uuid4().hex[:17]}"
        detail = {
            "Format": container.get("Format"),
            "DiskImageSize": float(obj.size),
            "Status": "active",
            "StatusMessage": "pending",
            "Progress": "3",
            "UserBucket": {"S3Bucket": bucket, "S3Key": key},
        }
        tasks[task_id] = {
            "detail": detail,
            "polls": 0,
            "data": obj.value,
            "region": self.region,
            "account": self.current_account,
            "description": self._get_param("Description", ""),
        }
        for spec in self._get_param("TagSpecifications", []):
            tasks[task_id]["tags"] = spec.get("Tags", [])
        return ActionResult(
            {
                "ImportTaskId": task_id,
                "SnapshotTaskDetail": detail,
                "Description": tasks[task_id]["description"],
            }
        )

    def advance(task_id: str, task: dict[str, Any]) -> None:
        from moto.ebs.models import ebs_backends

        task["polls"] += 1
        detail = task["detail"]
        if task["polls"] < 2 or detail["Status"] != "active":
            return
        data: bytes = task["data"]
        if detail["Format"] != "RAW" or data[510:512] != b"\x55\xaa":
            detail.update(
                Status="deleted",
                StatusMessage="ClientError: Disk validation failed [Unsupported specified disk format]",
            )
            return
        ebs = ebs_backends[task["account"]][task["region"]]
        snapshot = ebs.start_snapshot(
            volume_size=max(1, -(-len(data) // 2**30)),
            tags=None,
            description=f"Created by AWS-VMImport service for {task_id}",
        )
        for start in range(0, len(data), EBS_BLOCK):
            block = data[start : start + EBS_BLOCK].ljust(EBS_BLOCK, b"\0")
            if block.strip(b"\0"):
                snapshot.put_block(
                    str(start // EBS_BLOCK),
                    block,
                    base64.b64encode(hashlib.sha256(block).digest()).decode(),
                    "SHA256",
                    str(EBS_BLOCK),
                )
        snapshot.status = "completed"
        detail.update(
            Status="completed", StatusMessage="", Progress="100", SnapshotId=snapshot.snapshot_id
        )

    def describe_import_snapshot_tasks(self: EC2Response) -> Any:
        from moto.core.responses import ActionResult

        ids = self._get_param("ImportTaskIds", []) or list(tasks)
        found = []
        for task_id in ids:
            task = tasks.get(task_id)
            if task is None or task["region"] != self.region:
                continue
            advance(task_id, task)
            found.append(
                {
                    "ImportTaskId": task_id,
                    "Description": task["description"],
                    "SnapshotTaskDetail": dict(task["detail"]),
                    "Tags": task.get("tags", []),
                }
            )
        return ActionResult({"ImportSnapshotTasks": found})

    EC2Response.import_snapshot = import_snapshot
    EC2Response.describe_import_snapshot_tasks = describe_import_snapshot_tasks
    EBSResponse.start_snapshot = start_snapshot
    EBSResponse.put_snapshot_block = put_snapshot_block
    EBSResponse.list_snapshot_blocks = list_snapshot_blocks
    EBSResponse.complete_snapshot = complete_snapshot
    AmisResponse.register_image = register_image
    AmisResponse.copy_image = copy_image
    _PUSH_EXTENSION_INSTALLED = True


@dataclass(frozen=True)
class Fault:
    """One error response: the HTTP status, the AWS error code and message."""

    status: int
    code: str
    message: str = "injected by the test"
    retry_after: int | None = None  # seconds, sent as Retry-After


THROTTLED_EBS = Fault(400, "RequestThrottledException", "Rate exceeded")
CONCURRENT_LIMIT = Fault(
    400, "ConcurrentLimitExceededException", "too many concurrent requests on this snapshot"
)
THROTTLED_EC2 = Fault(503, "RequestLimitExceeded", "Request limit exceeded.")
UNAVAILABLE = Fault(503, "ServiceUnavailable", "Service Unavailable")

_EBS_ROUTES = [
    ("POST", re.compile(r"/snapshots/?$"), "StartSnapshot"),
    ("POST", re.compile(r"/snapshots/completion/[^/]+$"), "CompleteSnapshot"),
    ("PUT", re.compile(r"/snapshots/[^/]+/blocks/\d+$"), "PutSnapshotBlock"),
    ("GET", re.compile(r"/snapshots/[^/]+/blocks/\d+$"), "GetSnapshotBlock"),
    ("GET", re.compile(r"/snapshots/[^/]+/blocks$"), "ListSnapshotBlocks"),
]
_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/([^/]+)/")


def s3_operation(method: str, path: str, query: str) -> str:
    """The S3 operation of a path-style request (the ones a push and its tests make)."""
    params = parse_qs(query, keep_blank_values=True)
    on_object = "/" in path.strip("/")
    if method == "PUT":
        return (
            "UploadPart"
            if "partNumber" in params
            else ("PutObject" if on_object else "CreateBucket")
        )
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in params else "CompleteMultipartUpload"
    if method == "GET":
        if "uploads" in params:
            return "ListMultipartUploads"
        if "uploadId" in params:
            return "ListParts"
        return "GetObject" if on_object else "ListObjects"
    if method == "HEAD":
        return "HeadObject" if on_object else "HeadBucket"
    if method == "DELETE":
        return (
            "AbortMultipartUpload"
            if "uploadId" in params
            else ("DeleteObject" if on_object else "DeleteBucket")
        )
    return method


# What each request needs in IAM (for the policy tests): S3 operations map onto fewer actions.
S3_IAM = {
    "UploadPart": "s3:PutObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "ListParts": "s3:ListMultipartUploadParts",
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "DeleteObject": "s3:DeleteObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListObjects": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "CreateBucket": "s3:CreateBucket",
}


def iam_actions(counts: Iterable[str]) -> set[str]:
    """The IAM actions behind the requests the layer counted (``service:Action`` keys)."""
    actions = set()
    for key in counts:
        service, operation = key.split(":", 1)
        actions.add(S3_IAM.get(operation, key) if service == "s3" else key)
    return actions


class PushFaults:
    """A WSGI layer in front of moto: counts every request by ``service:Action`` (a real count
    of what reached the server) and answers with queued faults per action, in order
    (``queue``), or with one fault for every request after the first ``n`` (``fail_after``)."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self.faults: dict[str, deque[Fault]] = {}
        self.after: dict[str, tuple[int, Fault]] = {}
        self.injected: Counter[str] = Counter()
        self.regions: dict[
            str, list[str]
        ] = {}  # action -> the region of each request (from its signature)
        self.stalls: dict[str, deque[float]] = {}
        self.times: dict[
            str, list[float]
        ] = {}  # action -> when each request arrived (time.monotonic)
        self.holds: dict[str, int] = {}  # action -> requests after the first n wait for release()
        self.released = threading.Event()
        self.in_flight = 0  # requests inside moto right now
        self.lock = threading.Lock()

    def clear(self) -> None:
        with self.lock:
            self.counts.clear()
            self.faults.clear()
            self.after.clear()
            self.injected.clear()
            self.regions.clear()
            self.stalls.clear()
            self.times.clear()
            self.holds.clear()
        self.release()

    def hold_after(self, action: str, n: int) -> None:
        """Requests of ``action`` after the first ``n`` wait (unanswered) until release()."""
        with self.lock:
            self.holds[action] = n
            self.released.clear()

    def release(self) -> None:
        self.released.set()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no request is inside moto (held ones released first)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)

    def stall(self, action: str, *seconds: float) -> None:
        """The next requests of ``action`` wait this long before moto sees them (a stalled link)."""
        with self.lock:
            self.stalls.setdefault(action, deque()).extend(seconds)

    def queue(self, action: str, *faults: Fault) -> None:
        with self.lock:
            self.faults.setdefault(action, deque()).extend(faults)

    def fail_after(self, action: str, n: int, fault: Fault) -> None:
        with self.lock:
            self.after[action] = (n, fault)

    @staticmethod
    def action(environ: dict[str, Any]) -> str:
        match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        service = match.group(2) if match else "unknown"
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if service == "ebs":
            for verb, pattern, name in _EBS_ROUTES:
                if verb == method and pattern.search(path):
                    return f"ebs:{name}"
        if service == "ec2":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            action = parse_qs(body.decode("utf-8", "replace")).get("Action", ["?"])[0]
            return f"ec2:{action}"
        if service == "s3":
            return f"s3:{s3_operation(method, path, environ.get('QUERY_STRING', ''))}"
        return f"{service}:{method}"

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        action = self.action(environ)
        scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        fault: Fault | None = None
        with self.lock:
            self.counts[action] += 1
            self.regions.setdefault(action, []).append(scope.group(1) if scope else "")
            self.times.setdefault(action, []).append(time.monotonic())
            queued = self.faults.get(action)
            if queued:
                fault = queued.popleft()
            elif action in self.after:
                n, after_fault = self.after[action]
                if self.counts[action] > n:
                    fault = after_fault
            if fault is not None:
                self.injected[action] += 1
            stalls = self.stalls.get(action)
            delay = stalls.popleft() if stalls and fault is None else 0.0
            held = action in self.holds and self.counts[action] > self.holds[action]
            if fault is None:
                self.in_flight += 1
        if fault is None:
            try:
                if held:
                    self.released.wait()
                if delay:
                    time.sleep(delay)
                return list(self.app(environ, start_response))
            finally:
                with self.lock:
                    self.in_flight -= 1
        return self.respond(action, fault, start_response)

    @staticmethod
    def respond(action: str, fault: Fault, start_response: Callable[..., Any]) -> Iterable[bytes]:
        status = f"{fault.status} Injected"
        extra = [("Retry-After", str(fault.retry_after))] if fault.retry_after is not None else []
        if action.startswith("ec2:"):
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{fault.code}</Code>'
                f"<Message>{fault.message}</Message></Error></Errors><RequestID>injected</RequestID></Response>"
            ).encode()
            start_response(
                status, [("Content-Type", "text/xml"), ("Content-Length", str(len(body))), *extra]
            )
            return [body]
        body = json.dumps({"message": fault.message}).encode()
        start_response(
            status,
            [
                ("Content-Type", "application/json"),
                ("x-amzn-ErrorType", fault.code),
                ("Content-Length", str(len(body))),
                *extra,
            ],
        )
        return [body]


@dataclass(frozen=True)
class PushMoto(Moto):
    faults: PushFaults = None  # type: ignore[assignment]

    def reset(self) -> None:
        super().reset()
        self.faults.clear()


@pytest.fixture(scope="session")
def moto_push_server() -> Iterator[PushMoto]:
    extend_moto_for_push()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    assert server._server is not None
    faults = PushFaults(server._server.app)
    server._server.app = faults  # type: ignore[assignment]
    host, port = server.get_host_and_port()
    try:
        yield PushMoto(f"http://{host}:{port}", faults)
    finally:
        server.stop()


@pytest.fixture
def aws_push(moto_push_server: PushMoto, monkeypatch: pytest.MonkeyPatch) -> Iterator[PushMoto]:
    """As ``aws``, on the moto with the push extension and the fault layer (both cleared)."""
    moto_push_server.reset()
    for key, value in moto_push_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    yield moto_push_server
