"""The daemon as a user runs it: a subprocess against the simulated cloud served over HTTP."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from daemon_process import DaemonProcess

from provision.providers.simulated.cloud import SimulatedCloud
from provision.providers.simulated.server import serve_simulated_cloud

SPEC = """
cluster: demo
providers:
  sim: {{type: simulated-http, options: {{url: "{url}"}}}}
groups:
  - name: web
    provider: sim
    image: img-1
    size: {size}
    health: {{startupTimeout: 30s}}
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def cloud() -> Iterator[tuple[SimulatedCloud, str]]:
    sim = SimulatedCloud(page_size=2)
    server = serve_simulated_cloud(sim)
    yield sim, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_daemon_converges_serves_metrics_and_stops_cleanly_on_sigterm(
    tmp_path: Path, cloud: tuple[SimulatedCloud, str]
) -> None:
    sim, url = cloud
    spec = tmp_path / "cluster.yml"
    spec.write_text(SPEC.format(url=url, size=3))
    journal = tmp_path / "journal.db"
    daemon = DaemonProcess(spec, journal, interval=0.2, resync=0.3)
    try:
        wait_for(lambda: len(sim.live()) == 3)
        assert daemon.healthz()[0] == 200
        address = daemon.wait_event("listening")["address"]

        def metric_ready() -> bool:
            text = requests.get(f"http://{address}/metrics", timeout=5).text
            return 'provision_group_available{group="web"} 3' in text

        wait_for(metric_ready)
        # slow the cloud down, grow the group, and stop the daemon while a create is in flight
        sim.faults.call_delay = 0.8
        creates = sim.stats.calls.get("create", 0)
        spec.write_text(SPEC.format(url=url, size=6))
        wait_for(lambda: sim.stats.calls.get("create", 0) > creates)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert daemon.has("stopped")
    assert {"created", "leader"} <= {str(e.get("event")) for e in daemon.events}
    db = sqlite3.connect(journal)
    pending = db.execute("SELECT COUNT(*) FROM intents WHERE state='pending'").fetchone()[0]
    tracked = {
        r[0]
        for r in db.execute("SELECT instance_id FROM intents WHERE op='create' AND state='done'")
    }
    lease_owner = db.execute("SELECT owner FROM leases").fetchone()[0]
    db.close()
    assert pending == 0  # the in-flight create finished and was journaled
    assert {i.id for i in sim.live()} == tracked  # nothing untracked
    assert len(tracked) > 3  # the grown group was being created when the daemon stopped
    assert lease_owner is None  # released for the next daemon


def _spec_with_groups(url: str, groups: tuple[str, ...]) -> str:
    spec = SPEC.format(url=url, size=1)
    extra = "".join(
        f"  - name: {g}\n    provider: sim\n    image: img-1\n    size: 1\n" for g in groups
    )
    return spec + extra


def test_a_spec_file_still_being_written_is_not_taken_by_a_resync(tmp_path: Path) -> None:
    """A spec changed while the daemon reads it (an editor or `cp` writing it in place) is
    refused with a located one-line error, and the previous spec is kept: a file cut off
    between two groups is a valid spec that would remove every group after the cut."""
    from provision.errors import ProvisionError
    from provision.reconcile.daemon import reloader

    path = tmp_path / "cluster.yml"
    whole = _spec_with_groups("http://127.0.0.1:9", ("extra",))
    cut = whole[: whole.index("  - name: extra")]
    pauses: list[float] = []

    def writer_finishes(seconds: float) -> None:  # the writer completes while we wait
        pauses.append(seconds)
        path.write_text(whole)

    path.write_text(cut)
    with pytest.raises(ProvisionError, match=r"cluster\.yml: changed while being read"):
        reloader(path, pause=writer_finishes)()
    assert pauses == [0.2]
    assert [g.name for g in reloader(path, pause=lambda s: None)().groups][-1] == "extra"
    old = time.time() - 60  # a file nobody touched lately is read once
    os.utime(path, (old, old))
    assert [g.name for g in reloader(path, pause=writer_finishes)().groups][-1] == "extra"
    assert pauses == [0.2]

    def writer_removes(seconds: float) -> None:  # a tool that writes a new file and renames
        path.unlink()

    path.write_text(whole)
    with pytest.raises(ProvisionError, match=r"cluster\.yml: "):
        reloader(path, pause=writer_removes)()
