"""The six invariants of reconcile.md, against the simulated cloud with injected faults."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reconcile_world import BOTH_STORES, World, make_spec

from provision.providers.simulated.cloud import Faults, SimulatedCrash
from provision.reconcile.engine import Engine
from provision.reconcile.journal import LeaseHeldError
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_GROUP,
    TAG_SLOT,
    CallCounter,
    CountingProvider,
    CreateRequest,
    HealthState,
    StaleEpochError,
)
from provision.reconcile.spec import ClusterSpec

N, SURGE, UNAVAILABLE = 4, 1, 0


class Watch:
    """Called at every side-effect boundary (engine and cloud): checks the bounds against the
    cloud's true state, then crashes the 'process' when the schedule says so."""

    def __init__(self, world: World, crashes: set[int]) -> None:
        self.world, self.crashes, self.count = world, crashes, 0
        self.ceiling = N + SURGE
        self.floor: int | None = None
        self.max_seen = 0

    def __call__(self, point: str) -> None:
        self.count += 1
        owned = len(self.world.owned())
        self.max_seen = max(self.max_seen, owned)
        assert owned <= self.ceiling, f"surge ceiling broken at {point}: {owned} > {self.ceiling}"
        if self.floor is not None:
            available = self.world.available()
            assert available >= self.floor, (
                f"availability floor broken at {point}: {available} < {self.floor}"
            )
        if self.count in self.crashes:
            raise SimulatedCrash(point)


def run_until_converged(world: World, spec: ClusterSpec, watch: Watch) -> int:
    """Run engines until one converges; a crash discards the engine (its memory) and restarts."""
    restarts = 0
    while True:
        engine = world.engine(spec, boundary=watch)
        try:
            engine.converge(max_passes=300, between=world.step(2))
        except SimulatedCrash:
            restarts += 1
            assert restarts < 50
            continue
        return restarts


def assert_converged(world: World, spec: ClusterSpec, image: str) -> None:
    owned = world.owned()
    assert len(owned) == N
    assert {i.image for i in owned} == {image}
    assert len({i.tags[TAG_SLOT] for i in owned}) == N  # exactly one machine per slot
    engine = world.engine(spec)
    assert engine.store.pending_intents("demo") == []
    assert not engine.plan().has_changes


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    crashes=st.sets(st.integers(1, 45), max_size=3),
    lag=st.integers(0, 3),
    timeout_rate=st.sampled_from([0.0, 0.3]),
    error_rate=st.sampled_from([0.0, 0.2]),
    seed=st.integers(0, 1000),
)
def test_crash_at_any_boundary_converges_without_leak_or_duplicate(
    tmp_path_factory: pytest.TempPathFactory,
    crashes: set[int],
    lag: int,
    timeout_rate: float,
    error_rate: float,
    seed: int,
) -> None:
    """Invariants 1 and 3: crash anywhere (before the call, after it, after the journal write),
    under lagging lists, create time-outs and 429/5xx; never above the surge ceiling nor below the
    availability floor; converges with exactly one create per machine ever needed."""
    faults = Faults(
        list_lag=lag, create_timeout_rate=timeout_rate, error_rate=error_rate, seed=seed
    )
    world = World(tmp_path_factory.mktemp("crash"), faults)
    watch = Watch(world, crashes)
    faults.crash = watch
    try:
        v1, v2 = make_spec(N, "img-1"), make_spec(N, "img-2")
        run_until_converged(world, v1, watch)
        world.clock.advance(10)
        assert_converged(world, v1, "img-1")
        watch.floor = N - UNAVAILABLE
        watch.crashes = {c + watch.count for c in crashes}
        run_until_converged(world, v2, watch)
        assert_converged(world, v2, "img-2")
        assert world.cloud.stats.creates == 2 * N  # no duplicate was ever made
        assert watch.max_seen <= N + SURGE
    finally:
        world.close()


def test_lagging_list_and_create_timeouts_make_no_duplicates(tmp_path: Path) -> None:
    """Invariant 3 at scale: list lags by 4 polls, half the creates time out after succeeding."""
    world = World(tmp_path, Faults(list_lag=4, create_timeout_rate=0.5, seed=3), page_size=7)
    spec = make_spec(30, surge="20%")
    engine = world.engine(spec)
    engine.converge(max_passes=200, between=world.step(3))
    assert len(world.owned()) == 30
    assert world.cloud.stats.creates == 30
    assert world.cloud.stats.duplicate_keys > 0  # the time-outs really happened and were re-driven
    world.close()


@BOTH_STORES
def test_a_stale_leader_is_fenced_off(world: World) -> None:
    """Invariant 4: a second daemon takes over after the lease expires; the first one's journal
    writes and provider calls are refused by the epoch."""
    spec = make_spec(2)
    first = world.engine(spec, owner="a")
    with pytest.raises(LeaseHeldError):
        world.engine(spec, owner="b", acquire=False).acquire()
    world.clock.advance(30)  # a's lease expires (it is partitioned away)
    world.expire_leases()
    second = world.engine(spec, owner="b", acquire=False)
    assert second.acquire() > first.epoch
    second.converge(between=world.step(3))
    before = world.cloud.stats.creates
    world.cloud.vanish(world.owned()[0].id)  # give the stale leader something to do
    world.clock.advance(1)
    with pytest.raises(StaleEpochError):
        first.reconcile()  # the journal refuses its intent before any call
    provider = first.providers["sim"]
    tags = {TAG_CLUSTER: "demo", TAG_GROUP: "web"}
    with pytest.raises(StaleEpochError):  # and the cloud refuses its epoch even if it got there
        provider.create_instance(CreateRequest("stale", "stale", "img-1", {}, tags, first.epoch))
    victim = world.owned()[0].id
    with pytest.raises(StaleEpochError):
        provider.destroy_instance(victim, first.epoch)
    assert world.cloud.stats.creates == before and world.cloud.get(victim) in world.owned()


@BOTH_STORES
def test_remediation_breaker_and_max_in_flight(world: World) -> None:
    """Invariant 5: above maxUnhealthy nothing is destroyed; below it, at most maxInFlight
    remediations are in flight (destroyed, replacement not yet healthy)."""
    spec = make_spec(
        10, health="{startupTimeout: 20s, unhealthyTimeout: 10s, maxUnhealthy: 2, maxInFlight: 1}"
    )
    engine = world.engine(spec)
    engine.converge(between=world.step(3))
    ids = sorted(i.id for i in world.owned())
    for sick in ids[:3]:
        world.cloud.set_health(sick, HealthState.UNHEALTHY)
    for _ in range(10):
        engine.reconcile()
        world.clock.advance(5)
    assert world.cloud.stats.destroys == 0  # breaker: 3 unhealthy > 2
    world.cloud.set_health(ids[2], None)  # one recovers: 2 unhealthy, remediation may run
    in_flight_max = 0
    for _ in range(40):
        engine.reconcile()
        replacements = [i for i in world.owned() if i.id not in ids]
        booting = sum(
            1 for i in replacements if world.cloud.health(i.id) is not HealthState.HEALTHY
        )
        missing = 10 - len(world.owned())
        in_flight_max = max(in_flight_max, booting + missing)
        world.clock.advance(1)
    assert world.cloud.stats.destroys == 2
    assert {ids[0], ids[1]}.isdisjoint(i.id for i in world.owned())
    assert in_flight_max == 1


@BOTH_STORES
def test_never_touches_a_machine_without_this_groups_ownership_tags(world: World) -> None:
    """Invariant 5 (ownership): foreign machines survive scale-down, updates and remediation."""
    foreign = [
        world.cloud.add_foreign("untagged", {}),
        world.cloud.add_foreign(
            "other-group", {TAG_CLUSTER: "demo", TAG_GROUP: "db", TAG_SLOT: "00001"}
        ),
        world.cloud.add_foreign(
            "other-cluster", {TAG_CLUSTER: "prod", TAG_GROUP: "web", TAG_SLOT: "00001"}
        ),
        world.cloud.add_foreign("group-only", {TAG_GROUP: "web", TAG_SLOT: "00002"}),
    ]
    for f in foreign:
        world.cloud.set_health(f.id, HealthState.UNHEALTHY)
    engine = world.engine(make_spec(3))
    engine.converge(between=world.step(3))
    world.engine(make_spec(1, "img-2")).converge(between=world.step(3))
    world.engine(make_spec(0)).converge(between=world.step(3))
    assert world.owned() == []
    assert all(world.cloud.get(f.id) == f for f in foreign)  # untouched, still running


def test_converged_state_plans_empty_and_makes_no_mutating_call(tmp_path: Path) -> None:
    """Invariant 6: a pass over a converged state is pure reads: list pages only."""
    world = World(tmp_path, page_size=4)
    spec = make_spec(
        10, extra_groups="  - {name: db, provider: sim, image: img-1, members: [a, b, c]}\n"
    )
    world.engine(spec).converge(between=world.step(3))
    world.clock.advance(60)
    counter = CallCounter()
    from provision.providers.simulated.cloud import SimulatedProvider

    engine = Engine(
        spec,
        {"sim": CountingProvider(SimulatedProvider(world.cloud, "sim"), counter)},
        world.engine(spec, acquire=False).store,
        world.clock,
    )
    engine.acquire()
    plan = engine.plan()
    assert not plan.has_changes and all(
        c.action == "nothing" for g in plan.groups for c in g.changes
    )
    results = engine.reconcile()
    assert all(r.converged for r in results)
    assert counter.mutating == 0
    assert counter.calls == {"list": 2 * (3 + 1)}  # plan + pass: 10 machines = 3 pages, db = 1 page
    world.close()


@BOTH_STORES
def test_vanished_machines_are_replaced_and_scale_down_picks_victims_in_order(world: World) -> None:
    engine = world.engine(make_spec(4))
    engine.converge(between=world.step(3))
    ids = sorted(i.id for i in world.owned())
    world.cloud.vanish(ids[1])
    plan = engine.plan()
    assert [c.action for c in plan.groups[0].changes].count("create") == 1
    engine.converge(between=world.step(3))
    assert len(world.owned()) == 4 and ids[1] not in {i.id for i in world.owned()}
    world.cloud.set_health(ids[3], HealthState.UNHEALTHY)
    world.clock.advance(1)
    small = world.engine(make_spec(2, unavailable=2))
    small.reconcile()
    # unhealthy first, then the oldest
    assert {i.id for i in world.owned()} == {ids[2], max(i.id for i in world.cloud.live())}


@BOTH_STORES
def test_pets_roll_one_slot_at_a_time_and_keep_their_names(world: World) -> None:
    members = ["etcd-0", "etcd-1", "etcd-2"]
    world.engine(make_spec(members=members)).converge(between=world.step(3))
    world.clock.advance(10)
    watch = Watch(world, set())
    watch.ceiling, watch.floor = 4, 3
    engine = world.engine(make_spec(members=members, image="img-2"), boundary=watch)
    world.cloud.faults.crash = watch
    engine.converge(between=world.step(3))
    owned = world.owned()
    assert sorted(i.tags[TAG_SLOT] for i in owned) == members
    assert {i.image for i in owned} == {"img-2"}


def test_on_delete_leaves_old_machines_until_they_go(world: World) -> None:
    world.engine(make_spec(3)).converge(between=world.step(3))
    engine = world.engine(make_spec(3, "img-2", strategy="on-delete"))
    plan = engine.plan()
    assert not plan.has_changes
    assert all("on-delete" in c.reason for c in plan.groups[0].changes)
    world.cloud.vanish(world.owned()[0].id)
    engine.converge(between=world.step(3))
    assert sorted(i.image for i in world.owned()) == ["img-1", "img-1", "img-2"]
