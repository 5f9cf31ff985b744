"""Several `provision daemon` processes on one etcd journal (a real 3-member etcd), against the
simulated cloud over HTTP: groups sharded across them, leases and fencing tokens, a SIGKILLed
owner replaced within the lease time, a SIGSTOPped one fenced off when it wakes, etcd members
killed under them. Every invariant is checked from outside: the cloud's record of the calls,
its live machines, the daemons' /metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from daemon_process import DaemonProcess, RecordingCloud, wait_for
from etcd_cluster import EtcdCluster

from provision.providers.simulated.cloud import Faults
from provision.providers.simulated.server import serve_simulated_cloud
from provision.reconcile.etcd.location import parse_etcd_location
from provision.reconcile.etcd.store import EtcdStore
from provision.reconcile.provider import TAG_CLUSTER, TAG_GROUP, TAG_SLOT, HealthState
from provision.reconcile.shards import shard_owner

ROOT = Path(__file__).resolve().parents[2]
LEASE = 3.0
GROUP = """  - name: {name}
    provider: sim
    image: {image}
    size: {size}
    update: {{maxSurge: {surge}, maxUnavailable: 0}}
    health: {{startupTimeout: 30s}}
"""


def write_spec(
    path: Path, url: str, groups: list[str], image: str = "img-1", size: int = 2, surge: int = 1
) -> None:
    text = f'cluster: demo\nproviders:\n  sim: {{type: simulated-http, options: {{url: "{url}"}}}}\ngroups:\n'
    path.write_text(
        text + "".join(GROUP.format(name=g, image=image, size=size, surge=surge) for g in groups)
    )


@pytest.fixture
def served() -> Iterator[tuple[RecordingCloud, str]]:
    cloud = RecordingCloud(page_size=50, faults=Faults())
    server = serve_simulated_cloud(cloud)
    yield cloud, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def start(spec: Path, journal: str, owner: str, interval: float = 0.1) -> DaemonProcess:
    return DaemonProcess(spec, journal, "--owner", owner, "--lease", str(LEASE), interval=interval)


def owned_groups(daemon: DaemonProcess) -> set[str]:
    """The groups a daemon says (on /metrics) it owns now."""
    if daemon.proc.poll() is not None:
        return set()
    address = daemon.wait_event("listening")["address"]
    try:
        text = requests.get(f"http://{address}/metrics", timeout=2).text
    except requests.RequestException:
        return set()
    return set(
        re.findall(r'provision_group_owned\{group="([^"]+)",owner="[^"]+"\} 1(?:\.0)?$', text, re.M)
    )


def group_machines(cloud: RecordingCloud, group: str) -> list[object]:
    return list(cloud.live({TAG_CLUSTER: "demo", TAG_GROUP: group}))


def converged(cloud: RecordingCloud, groups: list[str], image: str, size: int) -> bool:
    for g in groups:
        machines = cloud.live({TAG_CLUSTER: "demo", TAG_GROUP: g})
        if len(machines) != size or {m.image for m in machines} != {image}:
            return False
    return True


def assert_single_writer(cloud: RecordingCloud) -> None:
    """Per group, the accepted calls of successive tokens never interleave, and tokens only grow."""
    by_group: dict[str, list[tuple[float, int]]] = {}
    for call in cloud.calls:
        by_group.setdefault(call.group, []).append((call.at, call.epoch))
    for group, calls in by_group.items():
        calls.sort()
        epochs = [e for _, e in calls]
        assert epochs == sorted(epochs), (
            f"group {group}: an older token acted after a newer one: {epochs}"
        )


def test_three_daemons_five_groups_each_group_has_exactly_one_owner(
    tmp_path: Path, served: tuple[RecordingCloud, str], etcd_url: str
) -> None:
    cloud, url = served
    groups = [f"g{i}" for i in range(5)]
    spec = tmp_path / "cluster.yml"
    write_spec(spec, url, groups)
    daemons = [start(spec, etcd_url, "d0")]
    doubles: list[str] = []
    rounds = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            now = list(daemons)
            forward = [owned_groups(d) for d in now]
            backward = [owned_groups(d) for d in reversed(now)][::-1]
            for g in groups:
                # each daemon's two queries bracket the later daemons' ones: owners in both at once
                holders = [
                    i
                    for i, (a, b) in enumerate(zip(forward, backward, strict=True))
                    if g in a and g in b
                ]
                if len(holders) > 1:
                    doubles.append(f"{g}: {holders}")
            rounds[0] += len(now) == 3

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        wait_for(lambda: owned_groups(daemons[0]) == set(groups), 20, "d0 owning every group")
        sampler.start()
        wait_for(lambda: converged(cloud, groups, "img-1", 2), 30, "convergence under one daemon")
        daemons.append(start(spec, etcd_url, "d1"))
        daemons.append(start(spec, etcd_url, "d2"))
        expected = {g: shard_owner(g, ["d0", "d1", "d2"]) for g in groups}

        def balanced() -> bool:
            owned = [owned_groups(d) for d in daemons]
            return all(
                g in owned[int(expected[g][1])] and sum(g in o for o in owned) == 1 for g in groups
            )

        try:
            wait_for(balanced, 30, "groups spread over the three daemons by their hash")
            write_spec(
                spec, url, groups, image="img-2"
            )  # work for each owner: a rolling update everywhere
            wait_for(
                lambda: converged(cloud, groups, "img-2", 2),
                60,
                "the rolling update under three daemons",
            )
        except AssertionError as exc:
            state = {d.proc.pid: (d.proc.poll(), sorted(owned_groups(d))) for d in daemons}
            machines = {
                g: sorted((m.image, m.id) for m in cloud.live({TAG_CLUSTER: "demo", TAG_GROUP: g}))
                for g in groups
            }
            raise AssertionError(
                f"{exc}; expected {expected}; owned {state}; machines {machines}; "
                f"logs {[d.lines[-60:] for d in daemons]}"
            ) from None
        assert balanced()
        assert sampler.is_alive()
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "provision",
                "status",
                str(spec),
                "--journal",
                etcd_url,
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        shown = {g["group"]: g["owner"] for g in json.loads(status.stdout)["groups"]}
        assert {g: o.split(" ")[0] for g, o in shown.items()} == expected and all(
            "(epoch " in o for o in shown.values()
        )
        stop.set()
        sampler.join(10)
        store = EtcdStore(parse_etcd_location(etcd_url))
        owners = store.group_owners("demo")
        assert {g: o for g, (o, _) in owners.items()} == expected
        assert sorted(store.members("demo")) == ["d0", "d1", "d2"]
        for d in daemons:
            assert d.stop() == 0
        assert store.group_owners("demo") == {} and store.members("demo") == []
    finally:
        stop.set()
        for d in daemons:
            d.kill()
    assert rounds[0] > 20 and doubles == []
    assert_single_writer(cloud)
    assert cloud.refused == []


class Floor:
    """Samples one group's live and available machines in the cloud every few milliseconds."""

    def __init__(self, cloud: RecordingCloud, group: str) -> None:
        self.cloud, self.group = cloud, group
        self.max_live, self.min_available, self.samples = 0, 10**9, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            live = self.cloud.live({TAG_CLUSTER: "demo", TAG_GROUP: self.group})
            self.max_live = max(self.max_live, len(live))
            self.min_available = min(
                self.min_available,
                sum(1 for m in live if self.cloud.health(m.id) is HealthState.HEALTHY),
            )
            self.samples += 1
            time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_sigkill_the_owner_mid_rolling_update_another_takes_over_within_the_lease(
    tmp_path: Path,
    served: tuple[RecordingCloud, str],
    etcd_url: str,
) -> None:
    cloud, url = served
    size, surge = 6, 2
    spec = tmp_path / "cluster.yml"
    write_spec(spec, url, ["web"], size=size, surge=surge)
    a, b = start(spec, etcd_url, "a"), start(spec, etcd_url, "b")
    try:
        wait_for(lambda: converged(cloud, ["web"], "img-1", size), 30, "convergence")
        owner, other = (a, b) if owned_groups(a) == {"web"} else (b, a)
        assert owned_groups(owner) == {"web"} and owned_groups(other) == set()
        cloud.faults.call_delay = 0.1  # each call takes a while: the kill lands mid-work
        floor = Floor(cloud, "web")
        calls = len(cloud.calls)
        write_spec(spec, url, ["web"], image="img-2", size=size, surge=surge)
        wait_for(lambda: len(cloud.calls) >= calls + 3, 20, "the rolling update under way")
        owner.kill()
        killed = time.monotonic()
        wait_for(lambda: owned_groups(other) == {"web"}, LEASE + 5, "the survivor owning web")
        took_over = time.monotonic() - killed
        wait_for(
            lambda: converged(cloud, ["web"], "img-2", size),
            40,
            "the rolling update finished by the survivor",
        )
        floor.close()
        assert other.stop() == 0
    finally:
        a.kill()
        b.kill()
    print(
        f"take-over {took_over:.2f}s samples={floor.samples} max live={floor.max_live} min available={floor.min_available}"
    )
    assert took_over < LEASE + 1.5
    assert floor.samples > 100 and floor.max_live <= size + surge and floor.min_available >= size
    assert_single_writer(cloud)
    slots = [m.tags[TAG_SLOT] for m in cloud.live({TAG_CLUSTER: "demo"})]
    assert len(slots) == len(set(slots)) == size  # no leak, no duplicate


def test_a_sigstopped_owner_is_fenced_off_when_it_wakes_and_steps_down(
    tmp_path: Path,
    served: tuple[RecordingCloud, str],
    etcd_url: str,
) -> None:
    cloud, url = served
    size = 6
    spec = tmp_path / "cluster.yml"
    write_spec(spec, url, ["web"], size=size, surge=2)
    first = start(spec, etcd_url, "first")
    second: DaemonProcess | None = None
    try:
        wait_for(lambda: converged(cloud, ["web"], "img-1", size), 30, "convergence")
        token = int(first.wait_event("group-claimed")["epoch"])
        cloud.faults.call_delay = 0.2
        calls = len(cloud.calls)
        write_spec(spec, url, ["web"], image="img-2", size=size, surge=2)
        wait_for(lambda: len(cloud.calls) >= calls + 2, 20, "the rolling update under way")
        first.proc.send_signal(signal.SIGSTOP)  # a partition, from its own point of view
        stopped = time.monotonic()
        time.sleep(LEASE + 1)  # past its lease: etcd expires it
        second = start(spec, etcd_url, "second")
        wait_for(lambda: owned_groups(second) == {"web"}, 15, "the second daemon owning web")
        wait_for(lambda: any(c.epoch > token for c in cloud.calls), 15, "the second daemon acting")
        first.proc.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        code = first.proc.wait(15)
        assert code == 1  # it stepped down
        assert first.has("lease-lost")
        wait_for(
            lambda: converged(cloud, ["web"], "img-2", size),
            40,
            "the second daemon finishing the update",
        )
        assert second.stop() == 0
    finally:
        first.proc.send_signal(signal.SIGCONT)
        first.kill()
        if second is not None:
            second.kill()
    print(
        "woken daemon:",
        [
            e.get("event")
            for e in first.events
            if e.get("event")
            in ("lease-lost", "lease-expired", "pass-failed", "call-failed", "group-died")
        ],
        "refused:",
        cloud.refused,
    )
    late = [c for c in cloud.calls if c.epoch == token and c.at > woke]
    assert late == [], f"calls of the woken daemon accepted: {late}"
    assert all(c.at < stopped + 0.5 for c in cloud.calls if c.epoch == token)
    assert_single_writer(cloud)
    assert len(cloud.live({TAG_CLUSTER: "demo"})) == size


def test_daemons_keep_working_when_an_etcd_member_then_the_leader_are_killed(
    tmp_path: Path,
    served: tuple[RecordingCloud, str],
) -> None:
    etcd = EtcdCluster.create(tmp_path / "etcd")
    etcd.start()
    cloud, url = served
    groups = ["g0", "g1", "g2"]
    spec = tmp_path / "cluster.yml"
    write_spec(spec, url, groups, size=2)
    journal = etcd.url("ha")
    daemons = [start(spec, journal, "a"), start(spec, journal, "b")]
    try:
        wait_for(lambda: converged(cloud, groups, "img-1", 2), 30, "convergence")
        follower = next(m for m in etcd.members if m is not etcd.leader())
        etcd.kill(follower)
        write_spec(spec, url, groups, size=3)
        wait_for(
            lambda: converged(cloud, groups, "img-1", 3), 30, "a scale-up with one member down"
        )
        etcd.start_member(follower)
        etcd.wait_healthy([follower])
        leader = etcd.leader()
        etcd.kill(leader)
        write_spec(spec, url, groups, image="img-2", size=3)
        wait_for(
            lambda: converged(cloud, groups, "img-2", 3),
            40,
            "a rolling update after the etcd leader died",
        )
        assert all(d.proc.poll() is None for d in daemons), "a daemon gave up"
        assert not any(d.has("lease-lost") for d in daemons)
        owned = [owned_groups(d) for d in daemons]
        assert sorted(g for o in owned for g in o) == groups
        for d in daemons:
            assert d.stop() == 0
    finally:
        for d in daemons:
            d.kill()
        etcd.stop()
    assert_single_writer(cloud)
