"""A small Azure Resource Manager on 127.0.0.1 speaking ARM's wire protocol, so the real
azure-mgmt-compute and azure-mgmt-network clients run against it unchanged.

- Resources live at their ids (``/subscriptions/S/resourceGroups/RG/providers/NS/TYPE/NAME``,
  nested types too); every request needs ``api-version`` and a bearer token.
- PUT answers 201 (new) or 200 with ``provisioningState: Creating|Updating`` and an
  ``Azure-AsyncOperation`` header; the operation reports ``InProgress`` for ``polls`` reads, then
  ``Succeeded`` (the resource turns ``Succeeded`` and its side effects happen: a VM gets its OS
  disk, a NIC its private IP). A parent that does not exist is a 404 ``ParentResourceNotFound``.
- GET of an id: the resource, or 404 ``ResourceNotFound``. GET of a collection: ``value`` and a
  ``nextLink`` (``$skiptoken``) every ``page_size`` resources.
- DELETE answers 202 with ``Location`` (202 while running, then 200); deleting a VM deletes the
  OS disk and the NICs whose ``deleteOption`` is ``Delete``; a missing resource is a 204.
- Faults are queued per (method, resource type): an HTTP status with an ARM error body (a 429
  carries ``Retry-After``), or ``drop`` (the request takes effect, the connection closes
  without an answer).
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-arm-token"  # the bearer token a FakeArm takes unless told another


@dataclass
class Fault:
    status: int | str  # an HTTP status, or "drop"
    code: str = ""
    retry_after: int | None = None


@dataclass
class Operation:
    resource: str  # the lower-cased id
    kind: str  # "put" or "delete"
    left: int
    status: str = "InProgress"


@dataclass
class FakeArm:
    polls: int = 1
    token: str = TOKEN
    page_size: int = 100
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    faults: dict[tuple[str, str], deque[Fault]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_ip: itertools.count[int] = field(default_factory=lambda: itertools.count(4))
    vm_fault: Fault | None = None  # the next VM create (PUT), list (GET collection) or delete fails
    chaos: float = 0.0  # this share of PUTs, DELETEs and listings fail at random (429, 503, drop)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    chaos_faults: int = 0

    def fail(
        self,
        method: str,
        rtype: str,
        status: int | str,
        code: str = "",
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Queue ``times`` failures of ``method`` on resources of type ``rtype`` (its last
        segment: ``virtualMachines``, ``images``, ``versions``)."""
        for _ in range(times):
            self.faults.setdefault((method, rtype.lower()), deque()).append(
                Fault(status, code, retry_after)
            )

    def of_type(self, rtype: str) -> list[dict[str, Any]]:
        """Every resource whose type ends with ``rtype`` (``Microsoft.Network/networkInterfaces``)."""
        return [r for r in self.resources.values() if r["type"].lower().endswith(rtype.lower())]

    def poll_all(self) -> None:
        """Finish every operation still running (what the platform does in its own time)."""
        with self.lock:
            for op in self.operations.values():
                if op.status == "InProgress":
                    self.finish(op)

    def get(self, rid: str) -> dict[str, Any] | None:
        return self.resources.get(rid.lower())

    # -- what a request does ---------------------------------------------------------------

    def fail_next_vm_call(self, status: int | str, retry_after: int | None = None) -> None:
        """The next PUT, DELETE or listing of virtual machines fails (``drop``: after it happened)."""
        self.vm_fault = Fault(
            status, "", retry_after if retry_after is not None else (1 if status == 429 else None)
        )

    def take_fault(self, method: str, rtype: str, collection: bool = False) -> Fault | None:
        if self.chaos and (method != "GET" or collection) and self.rng.random() < self.chaos:
            self.chaos_faults += 1
            return Fault(self.rng.choice([429, 503, "drop"]), "", 0)
        if (
            self.vm_fault is not None
            and rtype.lower() == "virtualmachines"
            and (method != "GET" or collection)
        ):
            fault, self.vm_fault = self.vm_fault, None
            return fault
        queue = self.faults.get((method, rtype.lower()))
        return queue.popleft() if queue else None

    def put(self, rid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        parts = rid.strip("/").split("/")
        parent = "/" + "/".join(parts[:-2])
        if len(parts) > 8 and parent.lower() not in self.resources:
            return 404, error("ParentResourceNotFound", f"parent {parent} not found"), ""
        problem = self.check_references(body)
        if problem:
            return 400, error("InvalidResourceReference", problem), ""
        existing = self.resources.get(rid.lower())
        resource = json.loads(json.dumps(body))
        resource["id"] = rid
        resource["name"] = parts[-1]
        resource["type"] = resource_type(parts)
        properties = resource.setdefault("properties", {})
        properties["provisioningState"] = "Updating" if existing else "Creating"
        if existing is not None:
            for key in ("storageProfile", "ipConfigurations"):  # what the platform filled in stays
                if key in existing.get("properties", {}) and key in properties:
                    properties[key] = existing["properties"][key]
        self.resources[rid.lower()] = resource
        op = uuid.uuid4().hex
        self.operations[op] = Operation(rid.lower(), "put", self.polls)
        if self.polls == 0:
            self.finish(self.operations[op])
        return (200 if existing else 201), resource, op

    def check_references(self, body: dict[str, Any]) -> str:
        for nic in (
            body.get("properties", {}).get("networkProfile", {}).get("networkInterfaces", [])
        ):
            if str(nic.get("id", "")).lower() not in self.resources:
                return f"network interface {nic.get('id')} not found"
        return ""

    def finish(self, op: Operation) -> None:
        op.status = "Succeeded"
        resource = self.resources.get(op.resource)
        if op.kind == "delete":
            if resource is not None:
                self.delete_now(resource)
            return
        if resource is None:
            return
        resource["properties"]["provisioningState"] = "Succeeded"
        kind = resource["type"].lower()
        if kind == "microsoft.network/networkinterfaces":
            for n, config in enumerate(resource["properties"].get("ipConfigurations", [])):
                props = config.setdefault("properties", {})
                props.setdefault("privateIPAddress", f"10.0.0.{next(self.next_ip)}")
                props.setdefault("privateIPAllocationMethod", "Dynamic")
                config.setdefault(
                    "id", f"{resource['id']}/ipConfigurations/{config.get('name', n)}"
                )
        if kind == "microsoft.compute/virtualmachines":
            self.attach(resource)

    def attach(self, vm: dict[str, Any]) -> None:
        """What Azure does when a VM is made: its OS disk exists, its NICs name it."""
        props = vm["properties"]
        os_disk = props.setdefault("storageProfile", {}).setdefault("osDisk", {})
        disk_name = os_disk.get("name") or f"{vm['name']}_OsDisk_1_{uuid.uuid4().hex[:8]}"
        os_disk["name"] = disk_name
        group = "/".join(vm["id"].split("/")[:5])
        disk_id = f"{group}/providers/Microsoft.Compute/disks/{disk_name}"
        os_disk.setdefault("managedDisk", {})["id"] = disk_id
        if disk_id.lower() not in self.resources:
            self.resources[disk_id.lower()] = {
                "id": disk_id,
                "name": disk_name,
                "type": "Microsoft.Compute/disks",
                "location": vm.get("location"),
                "managedBy": vm["id"],
                "properties": {
                    "provisioningState": "Succeeded",
                    "diskSizeGB": os_disk.get("diskSizeGB", 30),
                },
            }
        props.setdefault("timeCreated", time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
        props["vmId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, vm["id"].lower()))
        for ref in props.get("networkProfile", {}).get("networkInterfaces", []):
            nic = self.resources.get(str(ref["id"]).lower())
            if nic is not None:
                nic["properties"]["virtualMachine"] = {"id": vm["id"]}

    def delete_now(self, resource: dict[str, Any]) -> None:
        self.resources.pop(resource["id"].lower(), None)
        if resource["type"].lower() != "microsoft.compute/virtualmachines":
            return
        props = resource["properties"]
        os_disk = props.get("storageProfile", {}).get("osDisk", {})
        disk_id = str(os_disk.get("managedDisk", {}).get("id", "")).lower()
        if os_disk.get("deleteOption") == "Delete":
            self.resources.pop(disk_id, None)
        elif disk_id in self.resources:
            self.resources[disk_id].pop("managedBy", None)
        for ref in props.get("networkProfile", {}).get("networkInterfaces", []):
            nic_id = str(ref["id"]).lower()
            if ref.get("properties", {}).get("deleteOption") == "Delete":
                self.resources.pop(nic_id, None)
            elif nic_id in self.resources:
                self.resources[nic_id]["properties"].pop("virtualMachine", None)

    def delete(self, rid: str) -> tuple[int, str]:
        resource = self.resources.get(rid.lower())
        if resource is None:
            return 204, ""
        if resource["type"].lower() == "microsoft.network/networkinterfaces" and resource[
            "properties"
        ].get("virtualMachine"):
            return 400, "NicInUse"
        resource["properties"]["provisioningState"] = "Deleting"
        op = uuid.uuid4().hex
        self.operations[op] = Operation(rid.lower(), "delete", self.polls)
        if self.polls == 0:
            self.finish(self.operations[op])
        return 202, op

    def listing(self, collection: str, skip: int) -> tuple[list[dict[str, Any]], int | None]:
        prefix = collection.lower().rstrip("/") + "/"
        found = [
            r
            for key, r in sorted(self.resources.items())
            if key.startswith(prefix) and "/" not in key[len(prefix) :]
        ]
        page = found[skip : skip + self.page_size]
        more = skip + self.page_size < len(found)
        return page, (skip + self.page_size if more else None)

    def poll(self, op_id: str) -> Operation | None:
        op = self.operations.get(op_id)
        if op is not None and op.status == "InProgress":
            op.left -= 1
            if op.left <= 0:
                self.finish(op)
        return op


def resource_type(parts: list[str]) -> str:
    """``Microsoft.Compute/galleries/images/versions`` from an id's segments."""
    at = [i for i, p in enumerate(parts) if p.lower() == "providers"][-1]
    namespace = parts[at + 1]
    types = parts[at + 2 :: 2]
    return "/".join([namespace, *types])


def operations_path(subscription: str, parts: list[str], resource: dict[str, Any] | None) -> str:
    """Where ARM reports a long-running operation: ``/subscriptions/S/providers/NS/locations/L/operations``."""
    at = [i for i, p in enumerate(parts) if p.lower() == "providers"][-1]
    location = str((resource or {}).get("location") or "westeurope")
    return f"/{subscription}/providers/{parts[at + 1]}/locations/{location}/operations"


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet)
        return

    def _send(
        self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        arm = self.server.arm
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with arm.lock:
            arm.requests.append((method, url.path))
        if self.headers.get("Authorization") != f"Bearer {arm.token}":
            self._send(401, error("AuthenticationFailed", "missing or wrong bearer token"))
            return
        if "api-version" not in query:
            self._send(
                400,
                error("MissingApiVersionParameter", "The api-version query parameter is required"),
            )
            return
        base = f"http://{self.headers.get('Host')}"
        version = query["api-version"][0]
        parts = url.path.strip("/").split("/")
        if parts[-2:-1] == ["operations"]:  # .../providers/NS/locations/L/operations/ID
            self._operation(parts[-1], "monitor" in query)
            return
        rtype = parts[-1] if len(parts) % 2 == 1 else parts[-2]
        with arm.lock:
            fault = arm.take_fault(method, rtype, collection=len(parts) % 2 == 1)
        if fault is not None and fault.status != "drop":
            headers = (
                {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            )
            self._send(
                int(fault.status),
                error(fault.code or f"Status{fault.status}", "injected fault"),
                headers,
            )
            return
        with arm.lock:
            answer = self._act(method, url.path, parts, query, raw, base, version)
        if fault is not None:  # drop: it happened, the caller never hears
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._send(*answer)

    def _act(
        self,
        method: str,
        path: str,
        parts: list[str],
        query: dict[str, list[str]],
        raw: bytes,
        base: str,
        version: str,
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        arm = self.server.arm
        subscription = "/".join(parts[:2])
        if method == "GET" and len(parts) % 2 == 1:  # a collection
            skip = int(query.get("$skiptoken", ["0"])[0])
            page, more = arm.listing(path, skip)
            body: dict[str, Any] = {"value": page}
            if more is not None:
                body["nextLink"] = f"{base}{path}?api-version={version}&$skiptoken={more}"
            return 200, body, {}
        if method == "GET":
            found = arm.get(path)
            if found is None:
                return 404, error("ResourceNotFound", f"The Resource '{path}' was not found."), {}
            return 200, found, {}
        if method == "PUT":
            status, resource, op = arm.put(path, json.loads(raw or b"{}"))
            if not op:
                return status, resource, {}
            where = (
                f"{base}{operations_path(subscription, parts, resource)}/{op}?api-version={version}"
            )
            return status, resource, {"Azure-AsyncOperation": where, "Retry-After": "0"}
        if method == "DELETE":
            status, op = arm.delete(path)
            if status == 400:
                return 400, error(op, "the network interface is attached to a virtual machine"), {}
            if status == 204:
                return 204, None, {}
            where = f"{base}{operations_path(subscription, parts, None)}/{op}?api-version={version}&monitor=true"
            return 202, None, {"Location": where, "Retry-After": "0"}
        return 405, error("MethodNotAllowed", method), {}

    def _operation(self, op_id: str, as_location: bool) -> None:
        arm = self.server.arm
        with arm.lock:
            op = arm.poll(op_id)
        if op is None:
            self._send(404, error("OperationNotFound", op_id))
        elif as_location:
            self._send(
                202 if op.status == "InProgress" else 200,
                None if op.status == "InProgress" else {},
                {"Retry-After": "0"} if op.status == "InProgress" else None,
            )
        else:
            self._send(200, {"status": op.status, "name": op_id})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    arm: FakeArm


def serve_fake_arm(arm: FakeArm) -> tuple[_Server, str]:
    """Serve ``arm`` on a free port of 127.0.0.1 in a thread; returns the server and its URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.arm = arm
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
