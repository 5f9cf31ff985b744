"""Scale benchmark on the simulated cloud: a 10,000-machine group.

Prints: the time and provider calls of one steady-state pass (goal: calls proportional to pages,
not machines; under 1 s), converging 0 -> 10,000, and a full rolling update, with passes taken.

    python bench/reconcile_scale.py [--size 10000] [--page-size 1000] [--surge 10%]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from provision.clock import FakeClock
from provision.providers.simulated.cloud import SimulatedCloud, SimulatedProvider
from provision.reconcile.engine import Engine
from provision.reconcile.journal import SqliteStore
from provision.reconcile.provider import CallCounter, CountingProvider
from provision.reconcile.spec import parse_cluster_spec

SPEC = """
cluster: bench
groups:
  - name: fleet
    provider: sim
    image: {image}
    size: {size}
    update: {{maxSurge: "{surge}", maxUnavailable: 0}}
    health: {{startupTimeout: 5m, unhealthyTimeout: 1m}}
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--surge", default="10%")
    args = parser.parse_args()
    clock = FakeClock()
    cloud = SimulatedCloud(clock, page_size=args.page_size, boot_seconds=5.0)
    counter = CallCounter()
    provider = CountingProvider(SimulatedProvider(cloud, "sim"), counter)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "journal.db")

        def engine_for(image: str) -> Engine:
            spec = parse_cluster_spec(
                SPEC.format(image=image, size=args.size, surge=args.surge), "<bench>"
            )
            engine = Engine(spec, {"sim": provider}, store, clock)
            engine.acquire()
            return engine

        def converge(engine: Engine, what: str) -> None:
            before = dict(counter.calls)
            started = time.perf_counter()
            passes = engine.converge(max_passes=10_000, between=lambda _n: clock.advance(10))
            seconds = time.perf_counter() - started
            calls = {k: v - before.get(k, 0) for k, v in counter.calls.items()}
            print(f"{what}: {passes} passes, {seconds:.2f} s wall, provider calls {calls}")

        converge(engine_for("img-1"), f"converge 0 -> {args.size}")
        clock.advance(60)
        engine = engine_for("img-1")
        samples = []
        for _ in range(5):
            before = counter.total
            started = time.perf_counter()
            (result,) = engine.reconcile()
            samples.append(
                (time.perf_counter() - started, counter.total - before, counter.mutating)
            )
            assert result.converged
        best = min(s[0] for s in samples)
        calls = samples[-1][1]
        pages = -(-args.size // args.page_size)
        print(
            f"steady-state pass: {best * 1000:.0f} ms (best of 5, median {sorted(s[0] for s in samples)[2] * 1000:.0f} ms), "
            f"{calls} provider calls for {pages} pages, 0 mutating"
        )
        converge(
            engine_for("img-2"),
            f"rolling update of {args.size} (maxSurge {args.surge}, maxUnavailable 0)",
        )
        print(
            f"cloud: {cloud.stats.creates} creates, {cloud.stats.destroys} destroys, {len(cloud.live())} live"
        )
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
