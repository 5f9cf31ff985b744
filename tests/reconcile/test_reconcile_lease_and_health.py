"""Restarts must not lose what the journal knows: unhealthy time, the lease of a dead process;
bad daemon options take no lease; a dead group thread makes /healthz fail."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from reconcile_world import BOTH_STORES, World, make_spec

from provision.cli import main
from provision.clock import SystemClock
from provision.providers.simulated.cloud import (
    Faults,
    SimulatedCloud,
    SimulatedCrash,
    SimulatedProvider,
)
from provision.reconcile.daemon import Daemon, DaemonOptions
from provision.reconcile.journal import LeaseHeldError, SqliteStore
from provision.reconcile.model import Condition
from provision.reconcile.provider import HealthState

ROOT = Path(__file__).resolve().parents[2]


@BOTH_STORES
def test_unhealthy_time_survives_restarts_and_the_broken_machine_is_replaced(world: World) -> None:
    """Each observation is made by a new engine (a restarted daemon) 12 s after the last; the
    machine is unhealthy for 36 s > unhealthyTimeout 30 s, so the fourth engine replaces it."""
    spec = make_spec(
        3, health="{startupTimeout: 10s, unhealthyTimeout: 30s, maxUnhealthy: 40%, maxInFlight: 1}"
    )
    world.engine(spec).converge(between=world.step(3))
    world.clock.advance(20)
    sick = sorted(i.id for i in world.owned())[0]
    world.cloud.set_health(sick, HealthState.UNHEALTHY)
    conditions = []
    for _ in range(4):
        engine = world.engine(spec, acquire=False)
        engine.acquire()
        [machine] = [m for m in engine.observe(spec.groups[0]).machines if m.id == sick]
        conditions.append(machine.condition)
        engine.reconcile()
        engine.release()
        world.clock.advance(12)
    assert conditions == [Condition.UNHEALTHY] * 3 + [Condition.FAILED]
    assert sick not in {i.id for i in world.owned()}
    assert world.cloud.stats.destroys == 1


HOLDER = """
import sys, time
from provision.reconcile.journal import SqliteStore
store = SqliteStore(sys.argv[1])
store.acquire_lease("demo", "other", 60.0, time.time())
print("held", flush=True)
time.sleep(120)
"""


def test_a_lease_held_by_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(journal)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        store = SqliteStore(journal)
        with pytest.raises(LeaseHeldError, match="managed by other"):
            store.acquire_lease("demo", "me", 15.0, time.time())  # alive: refused
        holder.kill()
        time.sleep(0.2)  # killed, not yet reaped (a zombie): dead all the same
        assert store.acquire_lease("demo", "me", 15.0, time.time()) == 2
        store.close()
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yml"
    shutil.copy(ROOT / "examples" / "cluster-simulated.yml", path)
    return path


def test_bad_daemon_and_apply_options_take_no_lease(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = cluster.parent / ".demo-journal.db"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    taken = f"127.0.0.1:{busy.getsockname()[1]}"
    cases = [
        (
            ["daemon", str(cluster), "--listen", "bogus"],
            "listen address 'bogus': expected HOST:PORT",
        ),
        (["daemon", str(cluster), "--listen", "127.0.0.1:99999"], "a port from 0 to 65535"),
        (["daemon", str(cluster), "--listen", taken], f"cannot listen on {taken}"),
        (
            ["daemon", str(cluster), "--interval", "-5"],
            "daemon interval must be a number of seconds above 0",
        ),
        (
            ["daemon", str(cluster), "--interval", "inf"],
            "daemon interval must be a number of seconds above 0",
        ),
        (
            ["apply", str(cluster), "--interval", "-5"],
            "--interval must be a finite number of seconds (0 or more)",
        ),
        (
            ["apply", str(cluster), "--timeout", "nan"],
            "--timeout must be a finite number of seconds above 0",
        ),
        (
            ["up", str(cluster), "--interval", "-5"],
            "--interval must be a finite number of seconds (0 or more)",
        ),
        (
            ["down", str(cluster), "--timeout", "-1"],
            "--timeout must be a finite number of seconds above 0",
        ),
    ]
    try:
        for argv, message in cases:
            code = main(argv)
            _, err = capsys.readouterr()
            assert code == 2, (argv, err)
            assert message in err and "Traceback" not in err, (argv, err)
            store = SqliteStore(journal)
            assert store.current_epoch("demo") == 0, argv  # the lease was never taken
            store.close()
    finally:
        busy.close()
    assert main(["apply", str(cluster), "--interval", "0"]) == 0  # nothing blocks the next run


def test_a_dead_group_thread_fails_healthz_is_restarted_and_ends_the_daemon_if_it_keeps_dying(
    tmp_path: Path,
) -> None:
    crashing = threading.Event()
    crashing.set()

    def crash(point: str) -> None:
        if crashing.is_set() and point == "create:before":
            raise SimulatedCrash(point)  # escapes every handler: the thread dies

    clock = SystemClock()
    cloud = SimulatedCloud(clock, Faults(crash=crash))
    store = SqliteStore(tmp_path / "journal.db")
    daemon = Daemon(
        make_spec(2, health="{startupTimeout: 1s}"),
        {"sim": SimulatedProvider(cloud, "sim")},
        store,
        clock,
        DaemonOptions(0.05, 60.0, "127.0.0.1:0", lease_ttl=3.0),
    )
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(daemon.run()))
    runner.start()
    try:
        assert daemon.ready.wait(10) and daemon.listen_address is not None
        url = "http://{}:{}/healthz".format(*daemon.listen_address)
        seen: list[tuple[int, str]] = []
        deadline = time.monotonic() + 10
        while not any(code == 503 for code, _ in seen):
            assert time.monotonic() < deadline, seen
            answer = requests.get(url, timeout=5)
            seen.append((answer.status_code, answer.text))
            time.sleep(0.02)
        assert any(
            "group web thread died: SimulatedCrash('create:before')" in text
            for code, text in seen
            if code == 503
        )
        crashing.clear()  # the cause goes away: the restarted thread converges the group
        deadline = time.monotonic() + 10
        while len(cloud.live()) < 2 or requests.get(url, timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        crashing.set()
        cloud.vanish(cloud.live()[0].id)  # the replacement's create keeps killing the thread
        runner.join(timeout=20)
        assert not runner.is_alive() and codes == [1]
        assert "thread died 4 times" in daemon.failed
    finally:
        daemon.stop.set()
        runner.join(timeout=20)
        store.close()


def test_a_crash_reading_the_spec_is_logged_and_the_daemon_goes_on_with_the_old_spec(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in re-reading the spec (not a located spec error) must not end a daemon that
    runs for months: the resync logs it and keeps the spec it has."""
    reloads: list[int] = []

    def broken_reload() -> Any:
        reloads.append(1)
        raise RuntimeError("a bug in the loader")

    clock = SystemClock()
    cloud = SimulatedCloud(clock, Faults())
    store = SqliteStore(tmp_path / "journal.db")
    spec = make_spec(2)
    daemon = Daemon(
        spec,
        {"sim": SimulatedProvider(cloud, "sim")},
        store,
        clock,
        DaemonOptions(0.05, 0.1, "127.0.0.1:0", lease_ttl=3.0),
        reload=broken_reload,
    )
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(daemon.run()))
    with caplog.at_level("ERROR", logger="provision.reconcile"):
        runner.start()
        try:
            deadline = time.monotonic() + 10
            while len(reloads) < 3 or len(cloud.live()) < 2:
                assert time.monotonic() < deadline and runner.is_alive(), (reloads, codes)
                time.sleep(0.05)
            assert daemon.healthy() and daemon.engine.spec is spec
        finally:
            daemon.stop.set()
            runner.join(timeout=20)
            store.close()
    assert codes == [0]
    assert any(
        "RuntimeError('a bug in the loader')" in r.getMessage()
        or "spec reload crashed" in r.getMessage()
        for r in caplog.records
    )
