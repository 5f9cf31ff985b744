"""Tearing a cluster down: every machine carrying the cluster's tag, on every provider the spec
declares or the journal has ever recorded, destroyed through the journal (the engine's journaled
destroy, never the provider directly), and an exact account of whatever could not be removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provision.clock import Clock
from provision.errors import ProvisionError
from provision.reconcile.engine import Engine
from provision.reconcile.journal import Store
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_GROUP,
    Instance,
    InstanceState,
    Provider,
    list_all,
)
from provision.reconcile.registry import create_providers
from provision.reconcile.spec import ClusterSpec, GroupSpec, ProviderSpec

Say = Callable[[str], None]
DOWN = "cluster down"


@dataclass
class ClusterProviders:
    """The providers a cluster has used that could be opened, and why the others could not."""

    providers: dict[str, Provider] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)


def open_cluster_providers(spec: ClusterSpec, store: Store, clock: Clock) -> ClusterProviders:
    """One provider per name the spec declares (used by a group or not) or the journal recorded
    (a provider since removed from the spec is opened with the options it had then)."""
    wanted: dict[str, ProviderSpec] = {
        r.name: ProviderSpec(r.name, r.type, r.rate_limit, r.options, Path(r.base))
        for r in store.providers_seen(spec.name)
    }
    wanted.update(spec.providers)
    found = ClusterProviders()
    for name, pspec in sorted(wanted.items()):
        alone = dataclasses.replace(
            spec, providers={name: pspec}, groups=(GroupSpec("-", name, "-", size=0),)
        )
        try:
            found.providers[name] = create_providers(alone, clock)[name]
        except (ProvisionError, OSError, ValueError) as exc:
            found.unreachable[name] = str(exc)
    return found


def scaled_to_zero(spec: ClusterSpec) -> ClusterSpec:
    """The spec with every group at size 0: what the engine drives to destroy them."""
    return dataclasses.replace(
        spec, groups=tuple(dataclasses.replace(g, size=0, members=None) for g in spec.groups)
    )


@dataclass
class TeardownReport:
    destroyed: int = 0
    left: list[tuple[str, Instance]] = field(default_factory=list)  # (provider, machine)
    unreachable: dict[str, str] = field(default_factory=dict)  # provider -> why
    errors: list[str] = field(default_factory=list)
    journaled: dict[str, list[str]] = field(
        default_factory=dict
    )  # unreachable provider -> machines the journal knows there

    @property
    def complete(self) -> bool:
        return not self.left and not self.unreachable

    def describe_left(self) -> str:
        parts = [
            f"{i.id} ({i.tags.get(TAG_GROUP, '?')}, {i.state.value}) on {p}" for p, i in self.left
        ]
        for p, why in sorted(self.unreachable.items()):
            known = self.journaled.get(p, [])
            parts.append(
                f"provider {p} not reachable ({why})"
                + (
                    f", the journal knows {len(known)} machine(s) there: {', '.join(known)}"
                    if known
                    else ""
                )
            )
        return "; ".join(parts)


def tear_down_cluster(
    engine: Engine,
    unreachable: dict[str, str],
    *,
    timeout: float,
    say: Say,
    interval: float = 0.5,
) -> TeardownReport:
    """Destroy every machine of ``engine``'s cluster (its spec scaled to zero; it holds the lease).

    First the engine's own passes (pending creates re-driven then undone, groups the spec no
    longer declares included), then a sweep by the cluster tag alone of every reachable
    provider (stopped machines, groups no journal remembers), each destroy journaled."""
    clock = engine.clock
    report = TeardownReport(unreachable=dict(unreachable))
    deadline = clock.now() + timeout
    cluster = engine.spec.name
    while True:
        groups = engine.groups()
        results = engine.reconcile()
        waiting = False
        for group, result in zip(groups, results, strict=True):
            report.destroyed += result.destroyed
            for error in result.errors:
                say(f"{result.group}: {error}")
            if result.destroyed:
                say(f"{result.group}: destroyed {result.destroyed}")
            if not result.converged and group.provider in engine.providers:
                waiting = True
        if not waiting or clock.now() > deadline:
            break
        engine.renew()
        clock.sleep(interval)
    swept: set[str] = set()
    while True:
        failed = False
        for name in sorted(engine.providers):
            try:
                listed = list_all(engine.providers[name], {TAG_CLUSTER: cluster})[0]
            except ProvisionError as exc:
                report.errors.append(f"{name}: list: {exc}")
                failed = True
                continue
            for instance in listed:
                if instance.tags.get(TAG_CLUSTER) != cluster or instance.id in swept:
                    continue
                say(
                    f"destroy {instance.id} ({instance.tags.get(TAG_GROUP, '?')}, {instance.state.value}) on {name}"
                )
                result = engine.destroy_instance(name, instance, DOWN)
                if result.destroyed:
                    swept.add(instance.id)
                    report.destroyed += 1
                else:
                    failed = True
                    report.errors += result.errors
        if not failed or clock.now() > deadline:
            break
        engine.renew()
        clock.sleep(interval)
    engine.store.forget_instances(cluster, swept)
    for name in sorted(engine.providers):
        try:
            listed = list_all(engine.providers[name], {TAG_CLUSTER: cluster})[0]
        except ProvisionError as exc:
            report.unreachable[name] = f"list failed: {exc}"
            continue
        report.left += [
            (name, i)
            for i in listed
            if i.tags.get(TAG_CLUSTER) == cluster
            and (i.state is not InstanceState.TERMINATED or i.id not in swept)
        ]
    seen = engine.store.groups_seen(cluster) | {g.name: g.provider for g in engine.spec.groups}
    for name in report.unreachable:
        report.journaled[name] = sorted(
            machine
            for group, provider in seen.items()
            if provider == name
            for machine in engine.store.birth_times(cluster, group)
        )
    return report
