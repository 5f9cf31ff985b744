"""The one Protocol every machine provider implements: simulated, qemu, aws, gcp, azure, pxe.

Four operations, chosen so each cloud maps onto them without a read-after-write race:

``create_instance(request)``
    Create one machine *idempotently* and *tagged at birth*. ``request.key`` is written to the
    journal before the call; calling again with the same key must return the machine the first
    call made (never a second one). Maps to EC2 ``RunInstances(ClientToken=key,
    TagSpecifications=tags)``, GCE ``instances.insert(requestId=uuid5(key), labels=tags)``,
    Azure ``PUT .../virtualMachines/{request.name}`` (deterministic name, tags in the body), PXE a
    MAC reservation named by the key, qemu a state directory named by the key (tags in a file
    written before the VM starts, renamed into place).
``list_instances(tags, page_token)``
    One page of machines carrying *all* of ``tags``; ``next_token`` is ``None`` on the last page.
    It may lag writes (eventually consistent); the engine covers the lag with its journal.
``destroy_instance(instance_id, epoch)``
    Idempotent: destroying a machine that is already gone succeeds.
``address(instance, port)``
    Where the machine's ``port`` is reachable from here (qemu: the host-forwarded port), or None.

Every mutating call carries the caller's fencing ``epoch``. A provider that can enforce it (the
simulated cloud, a provider backed by a store with compare-and-set) refuses a call whose epoch is
lower than one it has seen (:class:`StaleEpochError`); others record it as the ``provision-epoch``
tag so a stale leader's work is visible, and rely on the journal's guard.

Tag keys and values are limited to ``[a-z0-9_-]{1,63}`` so they are valid GCE labels, EC2 and
Azure tags alike; anything longer (image references, properties) is carried by digest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from provision.errors import ProvisionError

TAG_CLUSTER = "provision-cluster"
TAG_GROUP = "provision-group"
TAG_SLOT = "provision-slot"
TAG_CONFIG = "provision-config"
TAG_EPOCH = "provision-epoch"
TAG_JOURNAL = "provision-journal"  # the id of the journal that created the machine

TAG_TEXT = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?")


class InstanceState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class Instance:
    """One machine as its provider reports it."""

    id: str
    name: str
    tags: Mapping[str, str]
    image: str
    created_at: float
    state: InstanceState = InstanceState.RUNNING

    @property
    def slot(self) -> str:
        return self.tags.get(TAG_SLOT, "")

    @property
    def config(self) -> str:
        return self.tags.get(TAG_CONFIG, "")

    def owned_by(self, cluster: str, group: str) -> bool:
        """True only when both ownership tags name this cluster and group."""
        return self.tags.get(TAG_CLUSTER) == cluster and self.tags.get(TAG_GROUP) == group


@dataclass(frozen=True)
class CreateRequest:
    """Everything a create needs; ``key`` and ``tags`` make it idempotent and owned at birth."""

    key: str
    name: str
    image: str
    properties: Mapping[str, Any]
    tags: Mapping[str, str]
    epoch: int


@dataclass(frozen=True)
class Page:
    instances: tuple[Instance, ...]
    next_token: str | None = None


@runtime_checkable
class Provider(Protocol):
    """A place machines live. See the module docstring for each operation's contract."""

    name: str

    def create_instance(self, request: CreateRequest) -> Instance: ...

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page: ...

    def destroy_instance(self, instance_id: str, epoch: int) -> None: ...

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None: ...


class HealthState(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


@runtime_checkable
class HealthSource(Protocol):
    """Implemented by providers that know machine health without a network probe (simulated)."""

    def probe_health(self, instance: Instance) -> HealthState: ...


# Destroy reasons after which a group that still wants machines gets a new one in its place
# (provision/reconcile/rollout.py): a re-image, not a machine leaving the group.
REPLACING_REASONS = frozenset({"out of date", "unhealthy"})


@runtime_checkable
class ReplacingProvider(Protocol):
    """Implemented by providers whose machines keep something for the group's next machine
    (metal: the local disk's provision-data partition, which its destroy would wipe). The
    engine calls this instead of ``destroy_instance`` when the machine is replaced: destroyed
    for one of ``REPLACING_REASONS`` while its group still wants machines."""

    def destroy_for_replacement(self, instance_id: str, epoch: int) -> None: ...


def destroy_for_reason(
    provider: Provider, instance_id: str, epoch: int, *, replacing: bool
) -> None:
    """Destroy ``instance_id``, telling a :class:`ReplacingProvider` when it is replaced."""
    if replacing and isinstance(provider, ReplacingProvider):
        provider.destroy_for_replacement(instance_id, epoch)
    else:
        provider.destroy_instance(instance_id, epoch)


# -- errors: the class decides the retry policy ------------------------------------------------


class ProviderError(ProvisionError):
    """A provider call failed for good (bad request, quota, permission): do not retry soon."""


class TransientProviderError(ProviderError):
    """The call failed in a way worth retrying (5xx, connection reset). The side effect did not
    happen, or the call is idempotent so retrying is safe either way."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, hint="the engine retries with back-off")
        self.retry_after = retry_after


class RateLimitedError(TransientProviderError):
    """HTTP 429 / throttling."""


class OutcomeUnknownError(TransientProviderError):
    """The call timed out: it may or may not have taken effect. Retry with the same key."""


class StaleEpochError(ProviderError):
    """The call carried a fencing epoch older than one already seen: this writer lost leadership."""


def list_all(provider: Provider, tags: Mapping[str, str]) -> tuple[list[Instance], int]:
    """Every instance carrying ``tags``, following pages; returns (instances, pages read)."""
    found: list[Instance] = []
    token: str | None = None
    pages = 0
    while True:
        page = provider.list_instances(tags, token)
        pages += 1
        found.extend(page.instances)
        token = page.next_token
        if token is None:
            return found, pages


@dataclass
class CallCounter:
    """Counts provider calls by operation; wrap a provider with :class:`CountingProvider`."""

    calls: dict[str, int] = field(default_factory=dict)

    def add(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1

    @property
    def mutating(self) -> int:
        return self.calls.get("create", 0) + self.calls.get("destroy", 0)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


class ProviderWrapper:
    """A transparent wrapper around a provider: :meth:`before` runs ahead of every create,
    list and destroy call (``op`` is ``create``, ``list`` or ``destroy``); subclasses
    override it to count or pace calls."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name

    def before(self, op: str) -> None:
        """Called before each mutating or listing call."""

    def create_instance(self, request: CreateRequest) -> Instance:
        self.before("create")
        return self.inner.create_instance(request)

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        self.before("list")
        return self.inner.list_instances(tags, page_token)

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        self.before("destroy")
        self.inner.destroy_instance(instance_id, epoch)

    def destroy_for_replacement(self, instance_id: str, epoch: int) -> None:
        self.before("destroy")
        if isinstance(self.inner, ReplacingProvider):
            self.inner.destroy_for_replacement(instance_id, epoch)
        else:
            self.inner.destroy_instance(instance_id, epoch)

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        return self.inner.address(instance, port)

    def probe_health(self, instance: Instance) -> HealthState:
        if isinstance(self.inner, HealthSource):
            return self.inner.probe_health(instance)
        return HealthState.UNKNOWN


class CountingProvider(ProviderWrapper):
    """A transparent wrapper that counts calls (for metrics, tests and the benchmark)."""

    def __init__(self, inner: Provider, counter: CallCounter | None = None) -> None:
        super().__init__(inner)
        self.counter = counter or CallCounter()

    def before(self, op: str) -> None:
        self.counter.add(op)
