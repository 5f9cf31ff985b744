"""Observe a group: the provider's (paged, possibly lagging) list, corrected by the journal, with
each machine's health classified. Only machines carrying both ownership tags are ever returned."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import requests

from provision.clock import Clock
from provision.reconcile.journal import Store
from provision.reconcile.model import Condition, Machine, Observation
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_GROUP,
    TAG_JOURNAL,
    HealthSource,
    HealthState,
    Instance,
    InstanceState,
    Provider,
    ProviderWrapper,
    TransientProviderError,
    list_all,
)
from provision.reconcile.spec import GroupSpec
from provision.retry import RetryPolicy


class HttpHealthChecker:
    """GET http://ADDRESS:PORT/PATH on each machine; 2xx is healthy. Probes run in parallel."""

    def __init__(
        self, provider: Provider, port: int, path: str, timeout: float = 2.0, workers: int = 16
    ) -> None:
        self.provider, self.port, self.path, self.timeout, self.workers = (
            provider,
            port,
            path,
            timeout,
            workers,
        )

    def probe(self, instance: Instance) -> HealthState:
        where = self.provider.address(instance, self.port)
        if where is None:
            return HealthState.UNKNOWN
        host, port = where
        try:
            response = requests.get(f"http://{host}:{port}{self.path}", timeout=self.timeout)
        except requests.RequestException:
            return HealthState.UNHEALTHY
        return HealthState.HEALTHY if 200 <= response.status_code < 300 else HealthState.UNHEALTHY

    def probe_all(self, instances: Sequence[Instance]) -> list[HealthState]:
        if len(instances) <= 1:
            return [self.probe(i) for i in instances]
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.probe, instances))


def _health_source(provider: Provider) -> HealthSource | None:
    """The provider that knows health itself, looking through counting/pacing wrappers (which
    always have ``probe_health`` and so would hide a provider that has none)."""
    while isinstance(provider, ProviderWrapper):
        provider = provider.inner
    return provider if isinstance(provider, HealthSource) else None


def probe_instances(
    provider: Provider, group: GroupSpec, instances: Sequence[Instance]
) -> list[HealthState]:
    """Health of each instance: from the provider itself when it knows, else over HTTP."""
    if not group.health.enabled:
        return [HealthState.HEALTHY] * len(instances)
    source = _health_source(provider)
    if source is not None:
        return [source.probe_health(i) for i in instances]
    if group.health.port is None:
        return [HealthState.HEALTHY] * len(instances)
    return HttpHealthChecker(provider, group.health.port, group.health.path).probe_all(instances)


@dataclass
class Observer:
    """Builds a group's :class:`Observation`; ``grace`` is how long a journaled create may stay
    invisible in the provider's list (eventual consistency) before it counts as vanished."""

    cluster: str
    provider: Provider
    store: Store
    clock: Clock
    grace: float = 300.0
    vanished: list[str] = field(default_factory=list)

    def observe(self, group: GroupSpec) -> Observation:
        now = self.clock.now()
        listed, pages = self._list(group)
        # Never trust the filter: re-check ownership, drop what is already gone.
        live = {
            i.id: i
            for i in listed
            if i.owned_by(self.cluster, group.name) and i.state is not InstanceState.TERMINATED
        }
        forget: list[str] = []
        for known in self.store.known_instances(self.cluster, group.name):
            if known.destroyed_at is not None:
                if known.instance_id not in live or now - known.destroyed_at > self.grace:
                    forget.append(known.instance_id)  # the list caught up (or re-check it)
                else:
                    live.pop(known.instance_id)  # destroyed; the list still lags
            elif known.instance_id in live:
                forget.append(known.instance_id)  # visible now: the list is the truth from here
            elif now - known.created_at <= self.grace:
                live[known.instance_id] = _instance_from_known(self.cluster, known)
            else:
                forget.append(known.instance_id)
                self.vanished.append(known.instance_id)
        self.store.forget_instances(self.cluster, forget, group.name)
        machines = self._classify(group, list(live.values()), now)
        pending = self.store.pending_intents(self.cluster, group.name)
        deleting = {i.instance_id for i in pending if i.op == "destroy"}
        machines = [
            dataclasses.replace(m, deleting=True) if m.id in deleting else m for m in machines
        ]
        for intent in pending:
            if intent.op == "create":
                request = json.loads(intent.request) if intent.request else {}
                machines.append(
                    Machine(
                        None,
                        str(request.get("name", "")),
                        intent.slot,
                        intent.config,
                        str(request.get("image", "")),
                        intent.created_at,
                        Condition.STARTING,
                        key=intent.key,
                        visible=False,
                    )
                )
        machines.sort(key=lambda m: (m.slot, m.name, m.ref))
        return Observation(group.name, tuple(machines), pages)

    def _list(self, group: GroupSpec) -> tuple[list[Instance], int]:
        """List the group's machines; a transient failure (429, 5xx) restarts the listing after a
        short jittered back-off (or the provider's retry_after), a few times, before the pass
        gives up."""
        policy = RetryPolicy(attempts=6, total=60.0, initial=0.2, maximum=5.0, clock=self.clock)
        tags = {TAG_CLUSTER: self.cluster, TAG_GROUP: group.name}
        return policy.call(
            lambda: list_all(self.provider, tags),
            retry_on=(TransientProviderError,),
            what=f"listing group {group.name}",
        )

    def _classify(self, group: GroupSpec, instances: list[Instance], now: float) -> list[Machine]:
        states = probe_instances(self.provider, group, instances)
        since = self.store.unhealthy_since(self.cluster, group.name) if group.health.enabled else {}
        born = self.store.birth_times(self.cluster, group.name)
        listed = {i.id for i in instances}
        # Health history outlives the process (a restart keeps counting); a machine gone from
        # the list takes its history with it.
        changes: dict[str, float | None] = {i: None for i in since if i not in listed}
        machines = []
        for instance, state in zip(instances, states, strict=True):
            if (
                instance.created_at <= 0 and instance.id in born
            ):  # the provider does not say: the journal does
                instance = dataclasses.replace(instance, created_at=born[instance.id])
            condition = Condition.AVAILABLE
            if instance.state is InstanceState.PENDING:
                condition = Condition.STARTING
            elif state is not HealthState.HEALTHY:
                first = since.get(instance.id)
                if first is None:
                    first = now
                    changes[instance.id] = now
                age = now - instance.created_at
                startup = group.health.startup_timeout
                if age < startup:
                    condition = Condition.STARTING
                elif first <= instance.created_at + startup:
                    condition = Condition.FAILED  # never healthy within its startup timeout
                elif now - first >= group.health.unhealthy_timeout:
                    condition = Condition.FAILED
                else:
                    condition = Condition.UNHEALTHY
            elif instance.id in since:
                changes[instance.id] = None
            machines.append(
                Machine(
                    instance.id,
                    instance.name,
                    instance.slot,
                    instance.config,
                    instance.image,
                    instance.created_at,
                    condition,
                    visible=True,
                    journal=instance.tags.get(TAG_JOURNAL, ""),
                )
            )
        self.store.set_unhealthy_since(self.cluster, group.name, changes)
        return machines


def _instance_from_known(cluster: str, known: object) -> Instance:
    from provision.reconcile.journal import KnownInstance
    from provision.reconcile.provider import TAG_CONFIG, TAG_SLOT

    assert isinstance(known, KnownInstance)
    tags = {
        TAG_CLUSTER: cluster,
        TAG_GROUP: known.group,
        TAG_SLOT: known.slot,
        TAG_CONFIG: known.config,
    }
    return Instance(known.instance_id, known.name, tags, known.image, known.created_at)
