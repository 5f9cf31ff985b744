"""Helpers for the reconcile tests: a fake clock, a simulated cloud, a journal, an engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provision.clock import FakeClock
from provision.providers.simulated.cloud import Faults, SimulatedCloud, SimulatedProvider
from provision.reconcile.engine import Engine
from provision.reconcile.etcd.location import parse_etcd_location
from provision.reconcile.etcd.store import EtcdStore
from provision.reconcile.journal import SqliteStore, Store
from provision.reconcile.provider import TAG_CLUSTER, TAG_GROUP, HealthState, Instance
from provision.reconcile.spec import ClusterSpec, parse_cluster_spec


def make_spec(
    size: int | None = 4,
    image: str = "img-1",
    *,
    members: list[str] | None = None,
    surge: Any = 1,
    unavailable: Any = 0,
    strategy: str = "rolling",
    health: str = "{startupTimeout: 60s, unhealthyTimeout: 30s, maxUnhealthy: 40%, maxInFlight: 1}",
    extra_groups: str = "",
) -> ClusterSpec:
    count = f"members: [{', '.join(members)}]" if members is not None else f"size: {size}"
    text = f"""
cluster: demo
providers:
  sim: {{type: simulated}}
groups:
  - name: web
    provider: sim
    image: {image}
    {count}
    properties: {{flavor: small}}
    update: {{strategy: {strategy}, maxSurge: {surge}, maxUnavailable: {unavailable}}}
    health: {health}
{extra_groups}"""
    return parse_cluster_spec(text, "<test>")


class World:
    """A cloud, a journal file and a clock shared by successive engines (restarts)."""

    def __init__(
        self,
        tmp: Path,
        faults: Faults | None = None,
        boot: float = 5.0,
        page_size: int = 3,
        etcd: str = "",
    ) -> None:
        self.clock = FakeClock()
        self.cloud = SimulatedCloud(
            self.clock, faults or Faults(), page_size=page_size, boot_seconds=boot
        )
        self.journal = tmp / "journal.db"
        self.etcd = etcd  # an etcd journal URL: the journal lives there instead
        self.stores: list[Store] = []

    def expire_leases(self) -> None:
        """On etcd, revoke the leases of the earlier handles: the fake clock cannot make etcd's
        real leases run out (SQLite's leases expire by the fake clock)."""
        for old in self.stores:
            if isinstance(old, EtcdStore):
                old.revoke_all()

    def store(self) -> Store:
        """A fresh handle on the world's journal."""
        store: Store
        if self.etcd:
            store = EtcdStore(parse_etcd_location(self.etcd))
        else:
            store = SqliteStore(self.journal)
        self.stores.append(store)
        return store

    def engine(
        self, spec: ClusterSpec, owner: str = "engine", acquire: bool = True, **kwargs: Any
    ) -> Engine:
        store = self.store()
        engine = Engine(
            spec,
            {"sim": SimulatedProvider(self.cloud, "sim")},
            store,
            self.clock,
            owner=owner,
            **kwargs,
        )
        if acquire:
            self.clock.advance(20)  # any previous (crashed) holder's lease has expired
            self.expire_leases()
            engine.acquire()
        return engine

    def owned(self, group: str = "web") -> list[Instance]:
        return self.cloud.live({TAG_CLUSTER: "demo", TAG_GROUP: group})

    def available(self, group: str = "web") -> int:
        return sum(1 for i in self.owned(group) if self.cloud.health(i.id) is HealthState.HEALTHY)

    def step(self, seconds: float = 2.0) -> Callable[[int], None]:
        return lambda _n: self.clock.advance(seconds)

    def close(self) -> None:
        for store in self.stores:
            store.close()


# Runs a test that takes the ``world`` fixture over the SQLite journal and over etcd.
BOTH_STORES = pytest.mark.parametrize("world", ["sqlite", "etcd"], indirect=True)
