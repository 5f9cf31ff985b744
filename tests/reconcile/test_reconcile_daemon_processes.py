"""Real daemon processes against the simulated cloud over HTTP: two daemons on one cluster (one
leads, one stands by and takes over when the leader is SIGKILLed), and a chaos run that SIGKILLs
the daemon at seeded random points during a scale-up and a rolling update."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from daemon_process import DaemonProcess, RecordingCloud, wait_for

from provision.providers.simulated.cloud import Faults
from provision.providers.simulated.server import serve_simulated_cloud
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_CONFIG,
    TAG_EPOCH,
    TAG_GROUP,
    TAG_JOURNAL,
    TAG_SLOT,
)

SPEC = """
cluster: demo
providers:
  sim: {{type: simulated-http, options: {{url: "{url}"}}}}
groups:
  - name: web
    provider: sim
    image: {image}
    size: {size}
    update: {{maxSurge: {surge}, maxUnavailable: 0}}
    health: {{startupTimeout: 30s}}
"""
LEASE = 15.0  # the daemon's lease time


@pytest.fixture
def served() -> Iterator[tuple[RecordingCloud, str]]:
    cloud = RecordingCloud(page_size=3, faults=Faults())
    server = serve_simulated_cloud(cloud)
    yield cloud, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def live_from_the_api(url: str) -> list[dict[str, object]]:
    """The cloud's own view, over its API: every machine that is not terminated."""
    return list(requests.get(f"{url}/v1/admin/live", timeout=5).json()["instances"])


def test_a_second_daemon_stands_by_and_takes_over_when_the_leader_is_killed(
    tmp_path: Path, served: tuple[RecordingCloud, str]
) -> None:
    cloud, url = served
    cloud.stall = (1, 3)  # the first leader's fourth create hangs: it is killed mid scale-up
    spec = tmp_path / "cluster.yml"
    spec.write_text(SPEC.format(url=url, image="img-1", size=8, surge=1))
    journal = tmp_path / "journal.db"
    first = DaemonProcess(spec, journal, "--owner", "first")
    second: DaemonProcess | None = None
    try:
        first.wait_event("leader")
        second = DaemonProcess(spec, journal, "--owner", "second")
        standby = second.wait_event("standby")
        assert "managed by first" in standby["holder"]
        code, text = second.healthz()
        assert code == 200 and text.startswith("standby: cluster 'demo' is managed by first")
        assert first.healthz() == (200, "ok\n")
        wait_for(cloud.stalled.is_set, 20, "the leader's first creates")
        assert not second.has("leader") and not second.has("created")
        first.kill()
        killed = time.monotonic()
        cloud.thaw.set()
        second.wait_event("leader", timeout=LEASE)
        took_over = time.monotonic() - killed
        assert took_over < LEASE
        wait_for(lambda: second.healthz() == (200, "ok\n"), 10, "the new leader's health")
        wait_for(lambda: len(cloud.live()) == 8 and second.has("created"), 30, "convergence")
        assert second.stop() == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
    epochs = sorted({c.epoch for c in cloud.calls})
    assert epochs == [1, 2]
    last_of_first = max(c.at for c in cloud.calls if c.epoch == 1)
    first_of_second = min(c.at for c in cloud.calls if c.epoch == 2)
    assert last_of_first < first_of_second  # never both making mutating calls
    assert cloud.refused == []  # nobody even tried out of turn
    machines = live_from_the_api(url)
    assert len(machines) == 8 and len({m["tags"][TAG_SLOT] for m in machines}) == 8  # type: ignore[index]


class Sampler:
    """Counts the group's live machines in the cloud every few milliseconds."""

    def __init__(self, cloud: RecordingCloud) -> None:
        self.cloud, self.max_seen, self.samples = cloud, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.max_seen = max(
                self.max_seen, len(self.cloud.live({TAG_CLUSTER: "demo", TAG_GROUP: "web"}))
            )
            self.samples += 1
            time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def kill_repeatedly(spec: Path, journal: Path, rng: random.Random, kills: int) -> int:
    """Start the daemon and SIGKILL it at a seeded random moment after it takes the lease,
    ``kills`` times; returns how many kills landed while it led."""
    landed = 0
    for _ in range(kills):
        daemon = DaemonProcess(spec, journal)
        try:
            daemon.wait_event("leader")
            time.sleep(rng.uniform(0.05, 0.9))
            landed += daemon.proc.poll() is None
        finally:
            daemon.kill()
    return landed


def test_chaos_sigkill_during_scale_up_and_rolling_update(
    tmp_path: Path, served: tuple[RecordingCloud, str]
) -> None:
    size, surge = 6, 2
    cloud, url = served
    cloud.faults.list_lag = 2
    cloud.faults.create_timeout_rate = 0.3
    cloud.faults.call_delay = 0.1  # each call takes a while: kills land mid-work
    cloud._rng.seed(11)
    rng = random.Random(5)
    spec = tmp_path / "cluster.yml"
    journal = tmp_path / "journal.db"
    sampler = Sampler(cloud)
    kills = 0
    progress: list[int] = []
    try:
        for image in ("img-1", "img-2"):  # a scale-up from nothing, then a rolling update
            spec.write_text(SPEC.format(url=url, image=image, size=size, surge=surge))

            def converged(image: str = image) -> bool:
                machines = cloud.live({TAG_CLUSTER: "demo", TAG_GROUP: "web"})
                return len(machines) == size and {m.image for m in machines} == {image}

            before = len(cloud.calls)
            kills += kill_repeatedly(spec, journal, rng, 11)
            assert len(cloud.calls) > before  # the killed daemons were working when they died
            progress.append(len(cloud.calls) - before)
            final = DaemonProcess(spec, journal)
            try:
                final.wait_event("leader")
                wait_for(converged, 40, f"convergence on {image}")
                time.sleep(0.3)  # a few more passes: nothing may change once converged
                assert converged()
            finally:
                assert final.stop() == 0
    finally:
        sampler.close()
    assert kills >= 20
    print(
        f"kills={kills} calls during kills={progress} max live={sampler.max_seen} samples={sampler.samples} "
        f"creates={cloud.stats.creates} duplicate keys={cloud.stats.duplicate_keys}"
    )
    assert sampler.samples > 100
    assert sampler.max_seen <= size + surge, (
        f"{sampler.max_seen} live machines > {size} + maxSurge {surge}"
    )
    machines = live_from_the_api(url)
    assert len(machines) == size
    assert len({m["tags"][TAG_SLOT] for m in machines}) == size  # type: ignore[index]
    for m in machines:
        tags = m["tags"]
        assert isinstance(tags, dict)
        assert tags[TAG_CLUSTER] == "demo" and tags[TAG_GROUP] == "web" and m["image"] == "img-2"
        assert tags[TAG_SLOT] and tags[TAG_CONFIG] and tags[TAG_EPOCH] and tags[TAG_JOURNAL]
