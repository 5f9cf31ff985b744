"""A small Compute Engine speaking the real REST wire protocol (compute v1 JSON), so the real
google-cloud-compute client runs against it unchanged: images insert/get/list/deprecate,
instances insert/get/list/delete, global and zone operations (get and wait), label filters,
``maxResults``/``pageToken`` paging, ``requestId`` idempotency as GCE documents it (a repeated
request with the same id returns the first request's operation and does nothing again), and
error bodies as GCE writes them. Faults are queued per method: ``"429"``, ``"503"``,
``"timeout"`` (the call takes effect, the answer comes after ``slow`` seconds), and for
``images.insert`` ``"operation-error"`` (the operation fails as a bad tarball makes it).

An image's ``rawDisk.source`` must name an object that exists in the GCS stand-in
(``storage_url``), read through its JSON API, as GCE reads the tarball."""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BASE = "/compute/v1/projects/"
NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL = re.compile(r"[a-z0-9_-]{0,63}")
TERM = re.compile(r'\s*\(?\s*([a-zA-Z][a-zA-Z0-9_.-]*)\s*=\s*"?([^"\s)]*)"?\s*\)?\s*')
STORAGE_PREFIX = "https://storage.googleapis.com/"


class HttpFailure(Exception):
    def __init__(
        self, code: int, message: str, reason: str, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.reason, self.retry_after = code, message, reason, retry_after


def parse_filter(text: str) -> list[tuple[str, str]]:
    """``labels.a = "b" AND (family = f)`` as [(field, value)]; anything else is a 400."""
    terms: list[tuple[str, str]] = []
    for part in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        match = TERM.fullmatch(part)
        if match is None:
            raise HttpFailure(
                400,
                f"Invalid value for field 'filter': '{text}'. Invalid list filter expression.",
                "invalid",
            )
        terms.append((match.group(1), match.group(2)))
    return terms


def _field(resource: dict[str, Any], path: str) -> Any:
    value: Any = resource
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@dataclass
class FakeGce:
    storage_url: str = ""  # the GCS stand-in that rawDisk.source objects must exist in
    slow: float = 2.0
    polls: int = 1  # operations report RUNNING this many times before DONE
    images: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    instances: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_request: dict[tuple[str, str], str] = field(default_factory=dict)
    faults: dict[str, list[str]] = field(default_factory=dict)
    next_fault: str | None = None  # for the next call of any method but an operation's
    fault_rate: float = (
        0.0  # chaos: this share of instance calls fail at random (429, 503, timeout)
    )
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    calls: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    _ips: Iterator[int] = field(default_factory=lambda: itertools.count(2))
    _pending: dict[str, tuple[int, Any]] = field(default_factory=dict)

    def inject(self, method: str, *faults: str) -> None:
        with self.lock:
            self.faults.setdefault(method, []).extend(faults)

    def count(self, method: str) -> int:
        return self.calls.count(method)

    # -- helpers -----------------------------------------------------------------------------

    def _link(self, path: str) -> str:
        return f"{self.url}{BASE}{path}"

    def _operation(
        self,
        project: str,
        zone: str | None,
        kind: str,
        target: str,
        request_id: str | None,
        finish: Any,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if request_id:
            seen = self.by_request.get((project, request_id))
            if seen is not None:
                return self.operations[seen]
        number = next(self._ids)
        name = f"operation-{number}-{kind}"
        where = f"{project}/zones/{zone}" if zone else f"{project}/global"
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(number),
            "name": name,
            "operationType": kind,
            "status": "RUNNING",
            "progress": 0,
            "targetLink": self._link(target),
            "selfLink": self._link(f"{where}/operations/{name}"),
            "insertTime": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime()),
        }
        if zone:
            op["zone"] = self._link(f"{project}/zones/{zone}")
        self.operations[name] = op
        self._pending[name] = (self.polls, (finish, error))
        if request_id:
            self.by_request[(project, request_id)] = name
        if self.polls == 0:
            self._advance(name)
        return op

    def _advance(self, name: str) -> dict[str, Any]:
        op = self.operations[name]
        pending = self._pending.get(name)
        if pending is None:
            return op
        left, (finish, error) = pending
        if left > 0:
            self._pending[name] = (left - 1, (finish, error))
            return op
        del self._pending[name]
        if error is None:
            finish()
        else:
            op["error"] = {"errors": [error]}
            op["httpErrorStatusCode"] = 400
            op["httpErrorMessage"] = "BAD REQUEST"
        op["status"], op["progress"] = "DONE", 100
        return op

    def _page(
        self, items: list[dict[str, Any]], query: dict[str, str], kind: str, link: str
    ) -> dict[str, Any]:
        terms = parse_filter(query.get("filter", ""))
        chosen = [
            i
            for i in sorted(items, key=lambda r: r["name"])
            if all(str(_field(i, f) if _field(i, f) is not None else "") == v for f, v in terms)
        ]
        size = min(int(query.get("maxResults", "500")), 500)
        start = int(query.get("pageToken") or 0)
        body: dict[str, Any] = {
            "kind": kind,
            "id": link,
            "selfLink": self._link(link),
            "items": chosen[start : start + size],
        }
        if start + size < len(chosen):
            body["nextPageToken"] = str(start + size)
        return body

    def _check_object(self, source: str) -> dict[str, Any] | None:
        if not source.startswith(STORAGE_PREFIX):
            raise HttpFailure(
                400, f"Invalid value for field 'resource.rawDisk.source': '{source}'.", "invalid"
            )
        bucket, _, obj = source[len(STORAGE_PREFIX) :].partition("/")
        url = f"{self.storage_url}/storage/v1/b/{bucket}/o/{urllib.parse.quote(obj, safe='')}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                json.loads(answer.read())
        except OSError:
            return {
                "code": "INVALID_IMAGE_FILE",
                "message": f"The resource '{source}' is not readable.",
            }
        return None

    # -- the API -----------------------------------------------------------------------------

    def tick(self) -> None:
        """GCE works on its own: every request moves each unfinished operation one step on."""
        for name in list(self._pending):
            self._advance(name)

    def handle(
        self, verb: str, path: str, query: dict[str, str], body: dict[str, Any]
    ) -> tuple[str, Any]:
        parts = path[len(BASE) :].split("/") if path.startswith(BASE) else []
        if len(parts) < 2:
            raise HttpFailure(404, f"The requested URL {path} was not found.", "notFound")
        project, scope = parts[0], parts[1:]
        if scope[0] == "global" and len(scope) >= 2 and scope[1] == "images":
            return self._images(verb, project, scope[2:], query, body)
        if scope[0] == "global" and len(scope) >= 3 and scope[1] == "operations":
            return "globalOperations." + ("wait" if scope[3:] == ["wait"] else "get"), self._get_op(
                scope[2]
            )
        if scope[0] == "zones" and len(scope) >= 3:
            zone, rest = scope[1], scope[2:]
            if rest[0] == "instances":
                return self._instances(verb, project, zone, rest[1:], query, body)
            if rest[0] == "operations" and len(rest) >= 2:
                return "zoneOperations." + (
                    "wait" if rest[2:] == ["wait"] else "get"
                ), self._get_op(rest[1])
        raise HttpFailure(404, f"The requested URL {path} was not found.", "notFound")

    def _get_op(self, name: str) -> Any:
        if name not in self.operations:
            raise HttpFailure(404, f"The resource 'operations/{name}' was not found", "notFound")
        return lambda: self._advance(name)

    def _images(
        self, verb: str, project: str, rest: list[str], query: dict[str, str], body: dict[str, Any]
    ) -> tuple[str, Any]:
        if not rest and verb == "GET":
            return "images.list", lambda: self._page(
                list(i for (p, _), i in self.images.items() if p == project),
                query,
                "compute#imageList",
                f"{project}/global/images",
            )
        if not rest and verb == "POST":
            return "images.insert", lambda: self._insert_image(
                project, query.get("requestId"), body
            )
        name = rest[0]
        found = self.images.get((project, name))
        if rest[1:] == ["deprecate"] and verb == "POST":

            def deprecate() -> Any:
                image = self._need(found, f"projects/{project}/global/images/{name}")
                return self._operation(
                    project,
                    None,
                    "deprecate",
                    f"{project}/global/images/{name}",
                    query.get("requestId"),
                    lambda: image.__setitem__("deprecated", body),
                )

            return "images.deprecate", deprecate
        if verb == "GET" and not rest[1:]:
            return "images.get", lambda: self._need(
                found, f"projects/{project}/global/images/{name}"
            )
        raise HttpFailure(404, "not found", "notFound")

    @staticmethod
    def _need(found: dict[str, Any] | None, what: str) -> dict[str, Any]:
        if found is None:
            raise HttpFailure(404, f"The resource '{what}' was not found", "notFound")
        return found

    @staticmethod
    def _check_labels(labels: dict[str, str]) -> None:
        for key, value in labels.items():
            if not (
                NAME.fullmatch(key) or re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key)
            ) or not LABEL.fullmatch(value):
                raise HttpFailure(
                    400, f"Invalid value for field 'resource.labels': '{key}={value}'.", "invalid"
                )

    def _insert_image(self, project: str, request_id: str | None, body: dict[str, Any]) -> Any:
        if request_id and (project, request_id) in self.by_request:
            return self.operations[self.by_request[(project, request_id)]]
        name = str(body.get("name", ""))
        if not NAME.fullmatch(name):
            raise HttpFailure(400, f"Invalid value for field 'resource.name': '{name}'.", "invalid")
        if (project, name) in self.images:
            raise HttpFailure(
                409,
                f"The resource 'projects/{project}/global/images/{name}' already exists",
                "alreadyExists",
            )
        self._check_labels(dict(body.get("labels", {})))
        error = self._check_object(str(body.get("rawDisk", {}).get("source", "")))
        if "operation-error" in self.faults.get("images.insert.operation", []):
            self.faults["images.insert.operation"].remove("operation-error")
            error = {
                "code": "INVALID_IMAGE_FILE",
                "message": "The disk image is not a gzip tar with disk.raw.",
            }
        image = {
            **body,
            "kind": "compute#image",
            "id": str(next(self._ids)),
            "status": "READY",
            "selfLink": self._link(f"{project}/global/images/{name}"),
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime()),
            "labelFingerprint": "42WmSpB8rSM=",
        }
        return self._operation(
            project,
            None,
            "insert",
            f"{project}/global/images/{name}",
            request_id,
            lambda: self.images.__setitem__((project, name), image),
            error,
        )

    def _instances(
        self,
        verb: str,
        project: str,
        zone: str,
        rest: list[str],
        query: dict[str, str],
        body: dict[str, Any],
    ) -> tuple[str, Any]:
        if not rest and verb == "GET":
            return "instances.list", lambda: self._page(
                [i for (p, z, _), i in self.instances.items() if (p, z) == (project, zone)],
                query,
                "compute#instanceList",
                f"{project}/zones/{zone}/instances",
            )
        if not rest and verb == "POST":
            return "instances.insert", lambda: self._insert_instance(
                project, zone, query.get("requestId"), body
            )
        name = rest[0]
        key = (project, zone, name)
        what = f"projects/{project}/zones/{zone}/instances/{name}"
        if verb == "GET":
            return "instances.get", lambda: self._need(self.instances.get(key), what)
        if verb == "DELETE":

            def delete() -> Any:
                instance = self._need(self.instances.get(key), what)
                instance["status"] = "STOPPING"
                return self._operation(
                    project,
                    zone,
                    "delete",
                    f"{project}/zones/{zone}/instances/{name}",
                    query.get("requestId"),
                    lambda: self.instances.pop(key, None),
                )

            return "instances.delete", delete
        raise HttpFailure(404, "not found", "notFound")

    def _insert_instance(
        self, project: str, zone: str, request_id: str | None, body: dict[str, Any]
    ) -> Any:
        if request_id and (project, request_id) in self.by_request:
            return self.operations[self.by_request[(project, request_id)]]
        name = str(body.get("name", ""))
        if not NAME.fullmatch(name):
            raise HttpFailure(400, f"Invalid value for field 'resource.name': '{name}'.", "invalid")
        key = (project, zone, name)
        if key in self.instances:
            raise HttpFailure(
                409,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
                "alreadyExists",
            )
        if not str(body.get("machineType", "")):
            raise HttpFailure(400, "Invalid value for field 'resource.machineType': ''.", "invalid")
        self._check_labels(dict(body.get("labels", {})))
        boot = [d for d in body.get("disks", []) if d.get("boot")]
        if len(boot) != 1 or not boot[0].get("initializeParams", {}).get("sourceImage"):
            raise HttpFailure(
                400,
                "Invalid value for field 'resource.disks': one boot disk with a sourceImage.",
                "invalid",
            )
        nics = [
            {**nic, "networkIP": f"10.128.0.{next(self._ips)}", "name": f"nic{n}"}
            for n, nic in enumerate(
                body.get("networkInterfaces") or [{"network": "global/networks/default"}]
            )
        ]
        instance = {
            **body,
            "kind": "compute#instance",
            "id": str(next(self._ids)),
            "status": "PROVISIONING",
            "zone": self._link(f"{project}/zones/{zone}"),
            "networkInterfaces": nics,
            "selfLink": self._link(f"{project}/zones/{zone}/instances/{name}"),
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime()),
        }
        error = None
        if "operation-error" in self.faults.get("instances.insert.operation", []):
            self.faults["instances.insert.operation"].remove("operation-error")
            error = {
                "code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                "message": f"The zone 'projects/{project}/zones/{zone}' does not have enough resources.",
            }
        else:
            self.instances[key] = instance

        def running() -> None:
            instance["status"] = "RUNNING"

        return self._operation(
            project,
            zone,
            "insert",
            f"{project}/zones/{zone}/instances/{name}",
            request_id,
            running,
            error,
        )


def _handler(fake: FakeGce) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # keep-alive answers go out at once, not after a delayed ACK

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _serve(self, verb: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            delay = 0.0
            try:
                body = json.loads(raw) if raw else {}
                with fake.lock:
                    fake.headers.append(dict(self.headers.items()))
                    fake.tick()
                    method, action = fake.handle(verb, url.path, query, body)
                    fake.calls.append(method)
                    queued = fake.faults.get(method)
                    fault = queued.pop(0) if queued else None
                    if fault is None and fake.next_fault and "Operations." not in method:
                        fault, fake.next_fault = fake.next_fault, None
                    if (
                        fault is None
                        and method.startswith("instances.")
                        and fake.rng.random() < fake.fault_rate
                    ):
                        fault = fake.rng.choice(("429", "503", "timeout"))
                    if fault == "429":
                        raise HttpFailure(
                            429, "Rate Limit Exceeded", "rateLimitExceeded", retry_after="0"
                        )
                    if fault == "503":
                        raise HttpFailure(
                            503, "The service is currently unavailable.", "backendError"
                        )
                    if fault == "403":
                        raise HttpFailure(
                            403,
                            "Required 'compute.instances.create' permission for "
                            f"'projects/{url.path.split('/')[4]}'",
                            "forbidden",
                        )
                    if fault == "quota":
                        raise HttpFailure(
                            403,
                            "Quota 'CPUS' exceeded. Limit: 24.0 in region us-central1.",
                            "quotaExceeded",
                        )
                    if fault == "timeout":
                        delay = fake.slow  # whatever the answer, it comes too late
                    answer = action()
                self._reply(200, answer, delay=delay)
            except HttpFailure as failure:
                error = {
                    "error": {
                        "code": failure.code,
                        "message": failure.message,
                        "errors": [
                            {
                                "message": failure.message,
                                "domain": "global",
                                "reason": failure.reason,
                            }
                        ],
                    }
                }
                self._reply(failure.code, error, delay=delay, retry_after=failure.retry_after)

        def _reply(
            self, code: int, body: Any, *, delay: float = 0.0, retry_after: str | None = None
        ) -> None:
            if delay:
                time.sleep(delay)
            data = json.dumps(body).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up waiting (a time-out fault)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler


@contextmanager
def serve_fake_gce(storage_url: str = "", **kwargs: Any) -> Iterator[FakeGce]:
    fake = FakeGce(storage_url=storage_url, **kwargs)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
