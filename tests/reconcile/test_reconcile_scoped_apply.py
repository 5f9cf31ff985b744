"""An apply scoped to a plan (what `provision apply` runs) ends only when the plan's creates are
made: a pass that skips a create because it is backing off after a failure is not the end."""

from __future__ import annotations

from pathlib import Path

from reconcile_world import World, make_spec

from provision.providers.simulated.cloud import SimulatedProvider
from provision.reconcile.engine import Engine
from provision.reconcile.journal import SqliteStore
from provision.reconcile.provider import ProviderWrapper, RateLimitedError


class FirstCreateThrottled(ProviderWrapper):
    """The first create is refused with Retry-After: 1 s (as EC2 throttling would)."""

    throttled = False

    def before(self, op: str) -> None:
        if op == "create" and not self.throttled:
            self.throttled = True
            raise RateLimitedError("throttled", retry_after=1.0)


def test_a_scoped_apply_does_not_end_while_a_planned_create_backs_off(tmp_path: Path) -> None:
    world = World(tmp_path, boot=0.0)
    store = SqliteStore(world.journal)
    provider = FirstCreateThrottled(SimulatedProvider(world.cloud, "sim"))
    engine = Engine(make_spec(size=3), {"sim": provider}, store, world.clock, owner="engine")
    engine.acquire()
    plan = engine.plan()
    assert sum(len(g.changes) for g in plan.groups) == 3
    passes = engine.converge(scope=plan, between=world.step(0.05))
    assert provider.throttled
    assert len(world.owned()) == 3, (
        f"apply ended after {passes} passes with {len(world.owned())} machines"
    )
    store.close()
