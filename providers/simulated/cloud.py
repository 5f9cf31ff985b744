"""A simulated cloud, in-process or as a local HTTP server, with fault injection.

It behaves like the clouds the engine must survive: ``list`` is paged and can lag writes by k
polls (eventual consistency), ``create`` is idempotent by key (EC2 ClientToken semantics) and can
time out *after* it succeeded, any call can fail with 429 or 5xx at a set rate, every mutating
call is fenced by the caller's epoch, and a crash hook runs at every side-effect boundary
(``create:before``, ``create:applied``, ``destroy:before``, ``destroy:applied``).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from provision.reconcile.clock import Clock, SystemClock
from provision.reconcile.provider import (
    TAG_CLUSTER,
    CreateRequest,
    HealthState,
    Instance,
    InstanceState,
    OutcomeUnknownError,
    Page,
    ProviderError,
    RateLimitedError,
    StaleEpochError,
    TransientProviderError,
)


class SimulatedCrash(BaseException):  # noqa: N818 (it is not an error the engine may catch)
    """Raised from a crash hook: the process 'dies' here. BaseException, so nothing catches it."""


@dataclass
class Faults:
    """What goes wrong, and how often. ``seed`` makes a fault schedule reproducible."""

    list_lag: int = 0
    create_timeout_rate: float = 0.0
    error_rate: float = 0.0
    crash: Callable[[str], None] | None = None
    call_delay: float = 0.0
    seed: int = 0


@dataclass
class _Record:
    instance: Instance
    visible_at: int
    gone_at: int | None = None
    health: HealthState | None = None


@dataclass
class CloudStats:
    creates: int = 0  # create calls that made a machine
    duplicate_keys: int = 0  # create calls answered from the idempotency table
    destroys: int = 0
    refused_epoch: int = 0
    errors: int = 0
    calls: dict[str, int] = field(default_factory=dict)


class SimulatedCloud:
    """The cloud's true state. Thread-safe; time comes from the injected clock."""

    def __init__(self, clock: Clock | None = None, faults: Faults | None = None, *, page_size: int = 500, boot_seconds: float = 0.0) -> None:
        self.clock = clock or SystemClock()
        self.faults = faults or Faults()
        self.page_size = page_size
        self.boot_seconds = boot_seconds
        self.stats = CloudStats()
        self._rng = random.Random(self.faults.seed)
        self._records: dict[str, _Record] = {}
        self._order: list[str] = []
        self._keys: dict[str, str] = {}
        self._epochs: dict[str, int] = {}
        self._counter = 0
        self._polls = 0
        self._lock = threading.RLock()

    # -- fault helpers ---------------------------------------------------------------------

    def _call(self, op: str) -> None:
        with self._lock:
            self.stats.calls[op] = self.stats.calls.get(op, 0) + 1
            roll = self._rng.random() if self.faults.error_rate else 1.0
            kind = self._rng.random()
        if self.faults.call_delay:
            self.clock.sleep(self.faults.call_delay)
        if roll < self.faults.error_rate:
            self.stats.errors += 1
            if kind < 0.5:
                raise RateLimitedError(f"simulated 429 on {op}", retry_after=1.0)
            raise TransientProviderError(f"simulated 503 on {op}")

    def _crash(self, point: str) -> None:
        if self.faults.crash is not None:
            self.faults.crash(point)

    def _fence(self, cluster: str, epoch: int) -> None:
        seen = self._epochs.get(cluster, 0)
        if epoch < seen:
            self.stats.refused_epoch += 1
            raise StaleEpochError(f"epoch {epoch} refused: {cluster!r} has seen epoch {seen}")
        self._epochs[cluster] = epoch

    # -- the API -------------------------------------------------------------------------------

    def create(self, request: CreateRequest) -> Instance:
        self._call("create")
        self._crash("create:before")
        with self._lock:
            self._fence(request.tags.get(TAG_CLUSTER, ""), request.epoch)
            existing = self._keys.get(request.key)
            if existing is not None:
                self.stats.duplicate_keys += 1
                return self._records[existing].instance
            self._counter += 1
            instance_id = f"i-{self._counter:08x}"
            instance = Instance(instance_id, request.name, dict(request.tags), request.image, self.clock.now())
            self._records[instance_id] = _Record(instance, self._polls + self.faults.list_lag)
            self._order.append(instance_id)
            self._keys[request.key] = instance_id
            self.stats.creates += 1
            timeout = self.faults.create_timeout_rate and self._rng.random() < self.faults.create_timeout_rate
        self._crash("create:applied")
        if timeout:
            raise OutcomeUnknownError(f"simulated timeout creating {request.key} (it was created)")
        return instance

    def list_page(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        self._call("list")
        with self._lock:
            if page_token is None:
                self._polls += 1
            start = bisect.bisect_right(self._order, page_token) if page_token else 0
            found: list[Instance] = []
            last = None
            for instance_id in self._order[start:]:
                record = self._records[instance_id]
                if self._polls < record.visible_at or (record.gone_at is not None and self._polls >= record.gone_at):
                    continue
                tagged = record.instance.tags
                if all(tagged.get(k) == v for k, v in tags.items()):
                    found.append(record.instance)
                    last = instance_id
                    if len(found) == self.page_size:
                        break
            more = len(found) == self.page_size and last != self._order[-1]
            return Page(tuple(found), last if more else None)

    def destroy(self, instance_id: str, epoch: int) -> None:
        self._call("destroy")
        self._crash("destroy:before")
        with self._lock:
            record = self._records.get(instance_id)
            if record is None:
                return
            self._fence(record.instance.tags.get(TAG_CLUSTER, ""), epoch)
            if record.instance.state is not InstanceState.TERMINATED:
                self._terminate(record)
                self.stats.destroys += 1
        self._crash("destroy:applied")

    def _terminate(self, record: _Record) -> None:
        record.instance = replace(record.instance, state=InstanceState.TERMINATED)
        record.gone_at = self._polls + self.faults.list_lag

    def health(self, instance_id: str) -> HealthState:
        with self._lock:
            record = self._records.get(instance_id)
            if record is None or record.instance.state is InstanceState.TERMINATED:
                return HealthState.UNHEALTHY
            if record.health is not None:
                return record.health
            booted = self.clock.now() >= record.instance.created_at + self.boot_seconds
            return HealthState.HEALTHY if booted else HealthState.UNHEALTHY

    # -- the test harness's hands ----------------------------------------------------------

    def set_health(self, instance_id: str, state: HealthState | None) -> None:
        with self._lock:
            self._records[instance_id].health = state

    def vanish(self, instance_id: str) -> None:
        """The machine dies outside the engine's control (host failure, a person)."""
        with self._lock:
            self._terminate(self._records[instance_id])

    def add_foreign(self, name: str, tags: Mapping[str, str], image: str = "foreign") -> Instance:
        """A machine someone else made (no or other ownership tags)."""
        with self._lock:
            self._counter += 1
            instance = Instance(f"i-{self._counter:08x}", name, dict(tags), image, self.clock.now())
            self._records[instance.id] = _Record(instance, self._polls)
            self._order.append(instance.id)
            return instance

    def live(self, tags: Mapping[str, str] | None = None) -> list[Instance]:
        """The truth, without lag: every machine not terminated carrying ``tags``."""
        with self._lock:
            return [
                r.instance
                for r in self._records.values()
                if r.instance.state is not InstanceState.TERMINATED
                and all(r.instance.tags.get(k) == v for k, v in (tags or {}).items())
            ]

    def get(self, instance_id: str) -> Instance | None:
        with self._lock:
            record = self._records.get(instance_id)
            return record.instance if record else None


class SimulatedProvider:
    """The in-process Provider over a :class:`SimulatedCloud`."""

    def __init__(self, cloud: SimulatedCloud, name: str = "simulated") -> None:
        self.cloud = cloud
        self.name = name

    def create_instance(self, request: CreateRequest) -> Instance:
        return self.cloud.create(request)

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        return self.cloud.list_page(tags, page_token)

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        self.cloud.destroy(instance_id, epoch)

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        return None

    def probe_health(self, instance: Instance) -> HealthState:
        return self.cloud.health(instance.id)


# -- over HTTP ---------------------------------------------------------------------------------


def instance_to_json(instance: Instance) -> dict[str, Any]:
    return {
        "id": instance.id, "name": instance.name, "tags": dict(instance.tags), "image": instance.image,
        "created_at": instance.created_at, "state": instance.state.value,
    }


def instance_from_json(body: Mapping[str, Any]) -> Instance:
    return Instance(
        str(body["id"]), str(body["name"]), dict(body["tags"]), str(body["image"]),
        float(body["created_at"]), InstanceState(body["state"]),
    )


def serve_simulated_cloud(cloud: SimulatedCloud, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Serve ``cloud`` over HTTP on ``host:port`` (0 picks a port) from a background thread."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def _guard(self, action: Callable[[], tuple[int, Any]]) -> None:
            try:
                code, body = action()
            except OutcomeUnknownError as exc:
                code, body = 504, {"error": str(exc)}
            except RateLimitedError as exc:
                code, body = 429, {"error": str(exc), "retry_after": exc.retry_after}
            except TransientProviderError as exc:
                code, body = 503, {"error": str(exc)}
            except StaleEpochError as exc:
                code, body = 409, {"error": str(exc), "kind": "stale-epoch"}
            except ProviderError as exc:
                code, body = 400, {"error": str(exc)}
            self._reply(code, body)

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            parts = url.path.strip("/").split("/")
            if parts == ["v1", "instances"]:
                tags = dict(t.split("=", 1) for t in query.get("tag", []))
                tokens = query.get("page_token") or []
                token = tokens[0] if tokens else None

                def listing() -> tuple[int, Any]:
                    page = cloud.list_page(tags, token)
                    return 200, {"instances": [instance_to_json(i) for i in page.instances], "next_token": page.next_token}

                self._guard(listing)
            elif len(parts) == 4 and parts[:2] == ["v1", "instances"] and parts[3] == "health":
                self._reply(200, {"state": cloud.health(parts[2]).value})
            elif parts == ["v1", "admin", "live"]:
                self._reply(200, {"instances": [instance_to_json(i) for i in cloud.live()]})
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            parts = urlsplit(self.path).path.strip("/").split("/")
            body = self._body()
            if parts == ["v1", "instances"]:
                request = CreateRequest(body["key"], body["name"], body["image"], body.get("properties", {}), body["tags"], int(body["epoch"]))
                self._guard(lambda: (200, instance_to_json(cloud.create(request))))
            elif parts == ["v1", "admin", "health"]:
                state = body.get("state")
                cloud.set_health(body["id"], HealthState(state) if state else None)
                self._reply(200, {})
            elif parts == ["v1", "admin", "faults"]:
                for key in ("list_lag", "create_timeout_rate", "error_rate", "call_delay"):
                    if key in body:
                        setattr(cloud.faults, key, body[key])
                self._reply(200, {})
            else:
                self._reply(404, {"error": "not found"})

        def do_DELETE(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            epoch = int((parse_qs(url.query).get("epoch") or ["0"])[0])
            if len(parts) == 3 and parts[:2] == ["v1", "instances"]:
                def destroying() -> tuple[int, Any]:
                    cloud.destroy(parts[2], epoch)
                    return 200, {}

                self._guard(destroying)
            else:
                self._reply(404, {"error": "not found"})

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="simulated-cloud", daemon=True).start()
    return server


class HttpSimulatedProvider:
    """The Provider that talks to :func:`serve_simulated_cloud` (``options: {url: ...}``)."""

    def __init__(self, url: str, name: str = "simulated-http", timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self.timeout = timeout
        self._session = requests.Session()

    def _check(self, response: requests.Response, what: str) -> Any:
        code = response.status_code
        body = response.json() if response.content else {}
        message = f"{what}: HTTP {code}: {body.get('error', '')}"
        if code == 504:
            raise OutcomeUnknownError(message)
        if code == 429:
            raise RateLimitedError(message, retry_after=body.get("retry_after"))
        if code >= 500:
            raise TransientProviderError(message)
        if code == 409:
            raise StaleEpochError(message)
        if code >= 400:
            raise ProviderError(message)
        return body

    def create_instance(self, request: CreateRequest) -> Instance:
        payload = {"key": request.key, "name": request.name, "image": request.image,
                   "properties": dict(request.properties), "tags": dict(request.tags), "epoch": request.epoch}
        try:
            response = self._session.post(f"{self.url}/v1/instances", json=payload, timeout=self.timeout)
        except requests.RequestException as exc:
            raise OutcomeUnknownError(f"create {request.key}: {exc}") from exc
        return instance_from_json(self._check(response, f"create {request.key}"))

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        params: list[tuple[str, str]] = [("tag", f"{k}={v}") for k, v in tags.items()]
        if page_token:
            params.append(("page_token", page_token))
        try:
            response = self._session.get(f"{self.url}/v1/instances", params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise TransientProviderError(f"list: {exc}") from exc
        body = self._check(response, "list")
        return Page(tuple(instance_from_json(i) for i in body["instances"]), body.get("next_token"))

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        try:
            response = self._session.delete(f"{self.url}/v1/instances/{instance_id}", params={"epoch": epoch}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise TransientProviderError(f"destroy {instance_id}: {exc}") from exc
        self._check(response, f"destroy {instance_id}")

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        return None

    def probe_health(self, instance: Instance) -> HealthState:
        try:
            response = self._session.get(f"{self.url}/v1/instances/{instance.id}/health", timeout=self.timeout)
            return HealthState(response.json()["state"])
        except (requests.RequestException, ValueError, KeyError):
            return HealthState.UNKNOWN


# -- a simulated cloud that outlives the process (for the CLI) --------------------------------


def save_cloud(cloud: SimulatedCloud, path: str) -> None:
    """Write the cloud's state to ``path`` (temp name, then rename)."""
    import os

    with cloud._lock:
        body = {
            "counter": cloud._counter,
            "keys": cloud._keys,
            "epochs": cloud._epochs,
            "instances": [
                {**instance_to_json(r.instance), "health": r.health.value if r.health else None}
                for r in cloud._records.values()
            ],
        }
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(body, handle)
    os.replace(tmp, path)


def load_cloud(path: str, clock: Clock | None = None, **kwargs: Any) -> SimulatedCloud:
    cloud = SimulatedCloud(clock, **kwargs)
    try:
        with open(path) as handle:
            body = json.load(handle)
    except FileNotFoundError:
        return cloud
    cloud._counter = int(body["counter"])
    cloud._keys = dict(body["keys"])
    cloud._epochs = {k: int(v) for k, v in body["epochs"].items()}
    for item in body["instances"]:
        instance = instance_from_json(item)
        health = HealthState(item["health"]) if item.get("health") else None
        cloud._records[instance.id] = _Record(instance, 0, 0 if instance.state is InstanceState.TERMINATED else None, health)
        cloud._order.append(instance.id)
    cloud._order.sort()
    return cloud


class FileSimulatedProvider(SimulatedProvider):
    """A simulated cloud kept in a JSON file, saved after every mutating call."""

    def __init__(self, path: str, clock: Clock | None = None, name: str = "simulated") -> None:
        super().__init__(load_cloud(path, clock), name)
        self.path = path

    def create_instance(self, request: CreateRequest) -> Instance:
        try:
            return super().create_instance(request)
        finally:
            save_cloud(self.cloud, self.path)

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        try:
            super().destroy_instance(instance_id, epoch)
        finally:
            save_cloud(self.cloud, self.path)


def main(argv: list[str] | None = None) -> int:
    """``python -m provision.providers.simulated.cloud --port 8900 [--state FILE]``: serve a cloud."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(description="serve a simulated cloud on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--boot-seconds", type=float, default=0.0)
    parser.add_argument("--page-size", type=int, default=500)
    args = parser.parse_args(argv)
    cloud = SimulatedCloud(page_size=args.page_size, boot_seconds=args.boot_seconds)
    server = serve_simulated_cloud(cloud, port=args.port)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
