"""Several daemons on etcd at scale: 100 groups of 1,000 machines (100,000) across 3 `provision
daemon` processes sharing a real 3-member etcd journal, on the simulated cloud served over HTTP.

Prints, from the daemons' own /metrics:
- the steady-state pass: per group (mean and max) and a whole round (every group woken at once
  by a resync, until the last finishes), on each daemon and across the three;
- provider calls per pass (proportional to pages: 1,000 machines / page size) and etcd round
  trips per pass (journal reads of the pass, plus the lease renewals and shard checks);
- fail-over: from SIGKILLing a daemon to every one of its groups having passed on a survivor
  (goal: within TTL + one interval).

The cloud is seeded directly (the machines exist, carry the journal's id and the desired config)
so the benchmark measures steady state, not 100,000 creates.

    python bench/etcd_scale.py [--groups 100] [--size 1000] [--page-size 500] [--lease 5] [--daemons 3]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reconcile"))

from daemon_process import daemon_argv  # noqa: E402
from etcd_cluster import EtcdCluster  # noqa: E402

from provision.providers.simulated.cloud import SimulatedCloud  # noqa: E402
from provision.providers.simulated.server import serve_simulated_cloud  # noqa: E402
from provision.reconcile.etcd.location import parse_etcd_location  # noqa: E402
from provision.reconcile.etcd.store import EtcdStore  # noqa: E402
from provision.reconcile.provider import (  # noqa: E402
    TAG_CLUSTER,
    TAG_CONFIG,
    TAG_EPOCH,
    TAG_GROUP,
    TAG_JOURNAL,
    TAG_SLOT,
    CreateRequest,
)
from provision.reconcile.shards import shard_owner  # noqa: E402
from provision.reconcile.spec import config_digest  # noqa: E402

SAMPLE = re.compile(r"^(provision_[a-z_]+)\{([^}]*)\} (\S+)$", re.M)


def write_spec(path: Path, url: str, groups: int, size: int) -> None:
    lines = [
        "cluster: bench",
        "providers:",
        f'  sim: {{type: simulated-http, options: {{url: "{url}"}}}}',
        "groups:",
    ]
    for g in range(groups):
        lines += [
            f"  - name: g{g:03d}",
            "    provider: sim",
            "    image: img-1",
            f"    size: {size}",
            "    update: {maxSurge: 10%, maxUnavailable: 0}",
        ]
    path.write_text("\n".join(lines) + "\n")


def seed(cloud: SimulatedCloud, journal: str, groups: int, size: int) -> None:
    config = config_digest("img-1", {})
    for g in range(groups):
        group = f"g{g:03d}"
        for n in range(1, size + 1):
            slot = f"{n:05d}"
            tags = {
                TAG_CLUSTER: "bench",
                TAG_GROUP: group,
                TAG_SLOT: slot,
                TAG_CONFIG: config,
                TAG_EPOCH: "1",
                TAG_JOURNAL: journal,
            }
            cloud.create(
                CreateRequest(
                    f"bench/{group}/{slot}/seed", f"bench-{group}-{slot}", "img-1", {}, tags, 1
                )
            )


class Daemon:
    def __init__(
        self,
        spec: Path,
        journal: str,
        owner: str,
        lease: float,
        interval: float,
        resync: float,
        log: Path,
    ) -> None:
        self.owner = owner
        self.log = log
        argv = daemon_argv(
            spec, journal, "--owner", owner, "--lease", str(lease), interval=interval, resync=resync
        )
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                argv,
                stderr=out,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        self.address = ""

    def metrics(self) -> dict[tuple[str, str], float]:
        if not self.address:
            for _ in range(200):
                found = re.search(r'"address": "([^"]+)"', self.log.read_text())
                if found:
                    self.address = found.group(1)
                    break
                time.sleep(0.05)
        try:
            text = requests.get(f"http://{self.address}/metrics", timeout=10).text
        except requests.RequestException:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon {self.owner} ended ({self.proc.returncode}): {self.log.read_text()[-3000:]}"
                ) from None
            return {}
        out: dict[tuple[str, str], float] = {}
        for name, labels, value in SAMPLE.findall(text):
            out[(name, labels)] = float(value)
        for line in text.splitlines():
            if line.startswith("provision_") and "{" not in line:
                name, _, value = line.partition(" ")
                out[(name, "")] = float(value)
        return out


def per_group(metrics: dict[tuple[str, str], float], name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), value in metrics.items():
        found = re.search(r'group="([^"]+)"', labels)
        if n == name and found:
            out[found.group(1)] = out.get(found.group(1), 0.0) + value
    return out


def owned(metrics: dict[tuple[str, str], float]) -> set[str]:
    return {g for g, v in per_group(metrics, "provision_group_owned").items() if v == 1}


def calls(metrics: dict[tuple[str, str], float]) -> float:
    return sum(v for (n, _), v in metrics.items() if n == "provision_provider_calls_total")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument(
        "--interval", type=float, default=600.0, help="between passes; rounds come from --resync"
    )
    parser.add_argument("--resync", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        etcd = EtcdCluster.create(root / "etcd")
        etcd.start()
        cloud = SimulatedCloud(page_size=args.page_size)
        server = serve_simulated_cloud(cloud)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        journal = etcd.url("bench")
        identity = EtcdStore(parse_etcd_location(journal)).identity()
        started = time.perf_counter()
        seed(cloud, identity, args.groups, args.size)
        print(
            f"seeded {args.groups} x {args.size} machines in {time.perf_counter() - started:.1f} s; page size {args.page_size}"
        )
        spec = root / "cluster.yml"
        write_spec(spec, url, args.groups, args.size)
        daemons = [
            Daemon(
                spec, journal, f"d{i}", args.lease, args.interval, args.resync, root / f"d{i}.log"
            )
            for i in range(args.daemons)
        ]
        try:
            return measure(args, daemons, cloud)
        finally:
            for d in daemons:
                if d.proc.poll() is None:
                    d.proc.send_signal(signal.SIGTERM)
            for d in daemons:
                try:
                    d.proc.wait(30)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
            server.shutdown()
            etcd.stop()


def measure(args: argparse.Namespace, daemons: list[Daemon], cloud: SimulatedCloud) -> int:
    groups = {f"g{g:03d}" for g in range(args.groups)}
    deadline = time.monotonic() + 120
    while True:
        snaps = [d.metrics() for d in daemons]
        passes = [per_group(s, "provision_reconcile_passes_total") for s in snaps]
        mine = [owned(s) for s in snaps]
        expected = [
            {g for g in groups if shard_owner(g, [d.owner for d in daemons]) == d.owner}
            for d in daemons
        ]
        if mine == expected and all(
            all(p.get(g, 0) >= 1 for g in m) for p, m in zip(passes, mine, strict=True)
        ):
            break
        if time.monotonic() > deadline:
            print(
                "groups never settled:",
                [len(m) for m in mine],
                daemons[0].address,
                daemons[0].log.read_text()[-1500:],
            )
            return 1
        time.sleep(0.5)
    print(
        f"{len(daemons)} daemons own {[len(m) for m in mine]} groups; creates {cloud.stats.creates} (steady: no work)"
    )
    # Rounds: a resync wakes every group of a daemon at once; watch each daemon until all its
    # groups passed again, at 50 ms resolution.
    round_times: list[float] = []
    pass_times: list[float] = []
    per_pass_calls: list[float] = []
    per_pass_etcd: list[float] = []
    for _ in range(args.rounds):
        base = [d.metrics() for d in daemons]
        base_passes = [per_group(s, "provision_reconcile_passes_total") for s in base]
        first_seen: list[float | None] = [None] * len(daemons)
        first_groups: list[list[str]] = [[] for _ in daemons]
        done_at: list[float | None] = [None] * len(daemons)
        limit = time.monotonic() + args.resync * 2 + 30
        while any(t is None for t in done_at) and time.monotonic() < limit:
            for i, d in enumerate(daemons):
                if done_at[i] is not None:
                    continue
                now_passes = per_group(d.metrics(), "provision_reconcile_passes_total")
                moved = [g for g in mine[i] if now_passes.get(g, 0) > base_passes[i].get(g, 0)]
                if moved and first_seen[i] is None:
                    first_seen[i] = time.monotonic()
                    first_groups[i] = moved
                if len(moved) == len(mine[i]):
                    done_at[i] = time.monotonic()
            time.sleep(0.05)
        after = [d.metrics() for d in daemons]
        for i in range(len(daemons)):
            seconds = per_group(after[i], "provision_pass_seconds_sum")
            counts = per_group(after[i], "provision_reconcile_passes_total")
            for g in mine[i]:
                n = counts.get(g, 0) - base_passes[i].get(g, 0)
                if n:
                    pass_times.append(
                        (
                            seconds.get(g, 0)
                            - per_group(base[i], "provision_pass_seconds_sum").get(g, 0)
                        )
                        / n
                    )
            n_passes = sum(counts.get(g, 0) - base_passes[i].get(g, 0) for g in mine[i])
            if n_passes:
                per_pass_calls.append((calls(after[i]) - calls(base[i])) / n_passes)
                per_pass_etcd.append(
                    (
                        after[i].get(("provision_etcd_requests_total", ""), 0)
                        - base[i].get(("provision_etcd_requests_total", ""), 0)
                    )
                    / n_passes
                )
            start, end = first_seen[i], done_at[i]
            if start is not None and end is not None:
                # the round began when the first finished pass started: its duration before it was seen
                spent = per_group(base[i], "provision_pass_seconds_sum")
                first = max(seconds.get(g, 0) - spent.get(g, 0) for g in first_groups[i])
                round_times.append(end - start + first)
    pass_times.sort()
    print(
        f"steady pass per group ({args.size} machines): mean {1000 * sum(pass_times) / len(pass_times):.0f} ms, "
        f"median {1000 * pass_times[len(pass_times) // 2]:.0f} ms, max {1000 * pass_times[-1]:.0f} ms ({len(pass_times)} passes)"
    )
    print(
        f"a whole round on one daemon (its ~{args.groups // len(daemons)} groups woken at once, until the last pass ends; "
        f"the three run side by side): median {sorted(round_times)[len(round_times) // 2]:.2f} s, max {max(round_times):.2f} s "
        f"({len(round_times)} rounds)"
    )
    pages = -(-args.size // args.page_size)
    print(
        f"provider calls per pass: {sum(per_pass_calls) / len(per_pass_calls):.2f} ({pages} pages of {args.page_size}; 0 mutating)"
    )
    print(
        f"etcd round trips per pass: {sum(per_pass_etcd) / len(per_pass_etcd):.2f} (the pass's journal reads, plus renewals and shard checks)"
    )
    # Fail-over: kill the daemon with the most groups.
    victim = max(range(len(daemons)), key=lambda i: len(mine[i]))
    lost = mine[victim]
    survivors = [d for i, d in enumerate(daemons) if i != victim]
    base_passes = [per_group(d.metrics(), "provision_reconcile_passes_total") for d in survivors]
    daemons[victim].proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    claimed_at = None
    while time.monotonic() - killed < 60:
        snaps = [d.metrics() for d in survivors]
        taken = set().union(*(owned(s) for s in snaps)) & lost
        if taken == lost and claimed_at is None:
            claimed_at = time.monotonic() - killed
        passed = set()
        for s, b in zip(snaps, base_passes, strict=True):
            p = per_group(s, "provision_reconcile_passes_total")
            passed |= {g for g in lost if p.get(g, 0) > b.get(g, 0)}
        if passed == lost:
            break
        time.sleep(0.05)
    took = time.monotonic() - killed
    print(
        f"fail-over: killed {daemons[victim].owner} ({len(lost)} groups); all claimed after {claimed_at or float('nan'):.2f} s, "
        f"all passed on survivors after {took:.2f} s (lease {args.lease:g} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
