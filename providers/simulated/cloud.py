"""A simulated cloud with fault injection: its true state and the in-process provider over it.
(Served over HTTP by :mod:`.server`, reached by :mod:`.client`, kept in a file by :mod:`.persistence`.)

It behaves like the clouds the engine must survive: ``list`` is paged and can lag writes by k
polls (eventual consistency), ``create`` is idempotent by key (EC2 ClientToken semantics) and can
time out *after* it succeeded, any call can fail with 429 or 5xx at a set rate, every mutating
call is fenced by the caller's epoch (per cluster and group: a token's scope, since sharded
daemons hold one token per group), and a crash hook runs at every side-effect boundary
(``create:before``, ``create:applied``, ``destroy:before``, ``destroy:applied``).
"""

from __future__ import annotations

import bisect
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from provision.clock import Clock, SystemClock
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_GROUP,
    CreateRequest,
    HealthState,
    Instance,
    InstanceState,
    OutcomeUnknownError,
    Page,
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
    # One-shot: the next call fails this way ("429", "503", or "timeout": a create that takes
    # effect and then times out, any other call that times out before it does anything).
    next_error: str | None = None


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

    def __init__(
        self,
        clock: Clock | None = None,
        faults: Faults | None = None,
        *,
        page_size: int = 500,
        boot_seconds: float = 0.0,
    ) -> None:
        self.clock = clock or SystemClock()
        self.faults = faults or Faults()
        self.page_size = page_size
        self.boot_seconds = boot_seconds
        self.stats = CloudStats()
        self._rng = random.Random(self.faults.seed)
        self._records: dict[str, _Record] = {}
        self._order: list[str] = []
        self._by_group: dict[
            tuple[str, str], list[str]
        ] = {}  # (cluster, group) -> ids in order: a tag filter is indexed, as in a real cloud
        self._keys: dict[str, str] = {}
        self._epochs: dict[str, int] = {}
        self._images: dict[str, str] = {}  # image digest -> image id
        self._counter = 0
        self._polls = 0
        self._timeout_next_create = False
        self._lock = threading.RLock()

    # -- fault helpers ---------------------------------------------------------------------

    def _call(self, op: str) -> None:
        with self._lock:
            injected, self.faults.next_error = self.faults.next_error, None
        if injected == "429":
            raise RateLimitedError(f"simulated 429 on {op}", retry_after=1.0)
        if injected == "503":
            raise TransientProviderError(f"simulated 503 on {op}")
        if injected == "timeout":
            if op != "create":
                raise OutcomeUnknownError(f"simulated timeout on {op}")
            self._timeout_next_create = True
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

    def _fence(self, tags: Mapping[str, str], epoch: int) -> None:
        scope = f"{tags.get(TAG_CLUSTER, '')}/{tags.get(TAG_GROUP, '')}"
        seen = self._epochs.get(scope, 0)
        if epoch < seen:
            self.stats.refused_epoch += 1
            raise StaleEpochError(f"epoch {epoch} refused: {scope!r} has seen epoch {seen}")
        self._epochs[scope] = epoch

    def _index(self, instance: Instance) -> None:
        self._order.append(instance.id)
        self._by_group.setdefault(
            (instance.tags.get(TAG_CLUSTER, ""), instance.tags.get(TAG_GROUP, "")), []
        ).append(instance.id)

    # -- the API -------------------------------------------------------------------------------

    def create(self, request: CreateRequest) -> Instance:
        self._call("create")
        self._crash("create:before")
        with self._lock:
            injected_timeout, self._timeout_next_create = self._timeout_next_create, False
            self._fence(request.tags, request.epoch)
            existing = self._keys.get(request.key)
            if existing is not None:
                self.stats.duplicate_keys += 1
                return self._records[existing].instance
            self._counter += 1
            instance_id = f"i-{self._counter:08x}"
            instance = Instance(
                instance_id, request.name, dict(request.tags), request.image, self.clock.now()
            )
            self._records[instance_id] = _Record(instance, self._polls + self.faults.list_lag)
            self._index(instance)
            self._keys[request.key] = instance_id
            self.stats.creates += 1
            timeout = injected_timeout or (
                self.faults.create_timeout_rate
                and self._rng.random() < self.faults.create_timeout_rate
            )
        self._crash("create:applied")
        if timeout:
            raise OutcomeUnknownError(f"simulated timeout creating {request.key} (it was created)")
        return instance

    def list_page(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        self._call("list")
        with self._lock:
            if page_token is None:
                self._polls += 1
            order = self._order
            if TAG_CLUSTER in tags and TAG_GROUP in tags:
                order = self._by_group.get((tags[TAG_CLUSTER], tags[TAG_GROUP]), [])
            start = bisect.bisect_right(order, page_token) if page_token else 0
            found: list[Instance] = []
            last = None
            for instance_id in order[start:]:
                record = self._records[instance_id]
                if self._polls < record.visible_at or (
                    record.gone_at is not None and self._polls >= record.gone_at
                ):
                    continue
                tagged = record.instance.tags
                if all(tagged.get(k) == v for k, v in tags.items()):
                    found.append(record.instance)
                    last = instance_id
                    if len(found) == self.page_size:
                        break
            more = len(found) == self.page_size and last != order[-1]
            return Page(tuple(found), last if more else None)

    def destroy(self, instance_id: str, epoch: int) -> None:
        self._call("destroy")
        self._crash("destroy:before")
        with self._lock:
            record = self._records.get(instance_id)
            if record is None:
                return
            self._fence(record.instance.tags, epoch)
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

    def register_image(self, digest: str) -> tuple[str, bool]:
        """The image id of ``digest``, registering it once: (id, already registered)."""
        self._call("register_image")
        with self._lock:
            existing = self._images.get(digest)
            if existing is not None:
                return existing, True
            image_id = "img-" + digest.split(":", 1)[-1][:12]
            self._images[digest] = image_id
            return image_id, False

    def find_image(self, digest: str) -> str | None:
        with self._lock:
            return self._images.get(digest)

    def images(self) -> dict[str, str]:
        with self._lock:
            return dict(self._images)

    # -- state as plain data (for persistence) ----------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything that must outlive the process, as JSON-ready data."""
        with self._lock:
            return {
                "counter": self._counter,
                "keys": dict(self._keys),
                "epochs": dict(self._epochs),
                "images": dict(self._images),
                "instances": [
                    {**instance_to_json(r.instance), "health": r.health.value if r.health else None}
                    for r in self._records.values()
                ],
            }

    def restore(self, body: Mapping[str, Any]) -> None:
        """Load what :meth:`snapshot` returned; raises ValueError/KeyError/TypeError on garbage."""
        with self._lock:
            self._counter = int(body["counter"])
            self._keys = {str(k): str(v) for k, v in dict(body["keys"]).items()}
            self._epochs = {str(k): int(v) for k, v in dict(body["epochs"]).items()}
            self._images = {str(k): str(v) for k, v in dict(body.get("images", {})).items()}
            self._records.clear()
            for item in body["instances"]:
                instance = instance_from_json(item)
                health = HealthState(item["health"]) if item.get("health") else None
                gone = 0 if instance.state is InstanceState.TERMINATED else None
                self._records[instance.id] = _Record(instance, 0, gone, health)
            self._order.clear()
            self._by_group.clear()
            for instance_id in sorted(self._records):
                self._index(self._records[instance_id].instance)

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
            self._index(instance)
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

    def register_image(self, digest: str) -> tuple[str, bool]:
        return self.cloud.register_image(digest)

    def find_image(self, digest: str) -> str | None:
        return self.cloud.find_image(digest)


def instance_to_json(instance: Instance) -> dict[str, Any]:
    return {
        "id": instance.id,
        "name": instance.name,
        "tags": dict(instance.tags),
        "image": instance.image,
        "created_at": instance.created_at,
        "state": instance.state.value,
    }


def instance_from_json(body: Mapping[str, Any]) -> Instance:
    return Instance(
        str(body["id"]),
        str(body["name"]),
        dict(body["tags"]),
        str(body["image"]),
        float(body["created_at"]),
        InstanceState(body["state"]),
    )
