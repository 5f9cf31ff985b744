"""Cluster commands: ``provision plan | apply | daemon | status CLUSTER.yml``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from provision.clock import SystemClock
from provision.commands import add_journal_option, check_seconds
from provision.errors import ProvisionError, SpecError, UsageError
from provision.fsutil import check_output_path, write_bytes_atomic
from provision.reconcile.daemon import Daemon, DaemonOptions, reloader
from provision.reconcile.engine import Engine
from provision.reconcile.etcd.store import EtcdStore
from provision.reconcile.image import GroupImages
from provision.reconcile.logs import JsonFormatter
from provision.reconcile.model import Condition
from provision.reconcile.plan import (
    ClusterPlan,
    StalePlanError,
    check_plan_matches_spec,
    render_plan_table,
)
from provision.reconcile.provider import Provider
from provision.reconcile.registry import create_providers
from provision.reconcile.shards import ShardedDaemon
from provision.reconcile.spec import ClusterSpec, load_cluster_spec, parse_cluster_spec
from provision.reconcile.stores import AnyStore, describe_store, open_store
from provision.reconcile.teardown import open_cluster_providers
from provision.spec.source import STDIN, read_text_file


def register(subparsers: Any) -> None:
    plan = subparsers.add_parser("plan", help="show what apply would change in a cluster")
    plan.add_argument("cluster", help="cluster spec (YAML)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 2 when there are changes, 0 when none",
    )
    plan.add_argument("--out", metavar="PLAN", help="save the plan for `provision apply PLAN`")
    plan.add_argument("--all", action="store_true", help="list unchanged machines too")
    add_journal_option(plan)
    plan.set_defaults(func=run_plan)

    apply = subparsers.add_parser(
        "apply", help="make a cluster match its spec (or execute a saved plan)"
    )
    apply.add_argument(
        "cluster", help="cluster spec (YAML) or a plan saved by `provision plan --out`"
    )
    apply.add_argument(
        "--timeout", type=float, default=1800.0, help="give up after SECONDS (default 1800)"
    )
    apply.add_argument(
        "--interval", type=float, default=1.0, help="seconds between passes (default 1)"
    )
    apply.add_argument(
        "--allow-destroy-all",
        action="store_true",
        help="let a spec that removes every group of the cluster destroy all its machines",
    )
    apply.add_argument(
        "--adopt", action="store_true", help="take over machines another journal created"
    )
    add_journal_option(apply)
    apply.set_defaults(func=run_apply)

    daemon = subparsers.add_parser(
        "daemon", help="keep a cluster at its spec until stopped (SIGTERM)"
    )
    daemon.add_argument("cluster", help="cluster spec (YAML)")
    daemon.add_argument(
        "--listen", help="metrics and health address HOST:PORT (default from the spec)"
    )
    daemon.add_argument(
        "--interval", type=float, help="seconds between passes (default from the spec)"
    )
    daemon.add_argument(
        "--resync", type=float, help="seconds between full resyncs (default from the spec)"
    )
    daemon.add_argument(
        "--lease",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="lease time: a daemon that dies is replaced within it (default 15)",
    )
    daemon.add_argument(
        "--owner",
        default=f"{os.uname().nodename}:{os.getpid()}",
        help="this daemon's name in the lease",
    )
    daemon.add_argument(
        "--adopt", action="store_true", help="take over machines another journal created"
    )
    add_journal_option(daemon)
    daemon.set_defaults(func=run_daemon)

    status = subparsers.add_parser(
        "status", help="show a cluster's machines and the journal's state"
    )
    status.add_argument("cluster", help="cluster spec (YAML)")
    status.add_argument("--json", action="store_true", help="print as JSON")
    add_journal_option(status)
    status.set_defaults(func=run_status)


def _providers(spec: ClusterSpec, store: AnyStore, clock: SystemClock) -> dict[str, Provider]:
    """The spec's providers and those the journal remembers (for groups since removed)."""
    opened = open_cluster_providers(spec, store, clock)
    used = {g.provider for g in spec.groups}
    if used & set(opened.unreachable):
        create_providers(spec, clock)  # raises the error of the spec's own provider
    return opened.providers


def _open(args: argparse.Namespace, spec: ClusterSpec, *, build: bool) -> tuple[Engine, AnyStore]:
    """The engine over the spec's providers (and those the journal remembers). ``build``: group
    images from image specs are built and published (apply); otherwise only their digests are
    computed (plan, status)."""
    store = open_store(spec, args.journal)
    clock = SystemClock()
    try:
        providers = _providers(spec, store, clock)
        images = GroupImages(spec, providers, build=build, progress=_say)
        engine = Engine(
            spec,
            providers,
            store,
            clock,
            owner=f"cli:{os.getpid()}",
            images=images,
            allow_destroy_all=getattr(args, "allow_destroy_all", False),
            adopt=getattr(args, "adopt", False),
        )
    except BaseException:
        store.close()
        raise
    return engine, store


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_plan(args: argparse.Namespace) -> int:
    if args.out:
        if args.cluster == STDIN:
            raise UsageError(
                "plan --out needs the cluster spec as a file, not stdin (the plan records where it is)"
            )
        check_output_path(Path(args.out))  # before any work
    spec = load_cluster_spec(args.cluster)
    engine, store = _open(args, spec, build=False)
    try:
        plan = dataclasses.replace(engine.plan(), journal=describe_store(store))
    finally:
        store.close()
    if args.out:
        write_bytes_atomic(Path(args.out), plan.to_json().encode())
    print(plan.to_json() if args.json else render_plan_table(plan, verbose=args.all), end="")
    return 2 if args.detailed_exitcode and plan.has_changes else 0


def _load_target(path: str) -> tuple[ClusterSpec, ClusterPlan | None]:
    """The cluster spec at ``path``, or the spec and the plan of a plan saved there (checked
    strictly, and against the spec it carries)."""
    text, problems = read_text_file(Path(path))  # a regular file (or - for stdin), bounded
    if text is None:
        raise SpecError(problems)
    if not text.lstrip().startswith("{"):
        return parse_cluster_spec(text, path), None
    plan = ClusterPlan.from_json(text, path)
    spec = parse_cluster_spec(plan.spec_text, plan.spec_file)
    check_plan_matches_spec(plan, spec, path)
    return spec, plan


def run_apply(args: argparse.Namespace) -> int:
    check_seconds("--interval", args.interval, zero=True)
    check_seconds("--timeout", args.timeout, zero=False)
    spec, saved = _load_target(args.cluster)
    if saved is not None and saved.journal and not args.journal:
        args.journal = saved.journal  # the journal the plan was made against, from any directory
    engine, store = _open(args, spec, build=True)
    try:
        current = engine.plan()
        if saved is not None and current.observed_digest != saved.observed_digest:
            raise StalePlanError(
                "the machines changed since this plan was made; refusing to apply it",
                hint=f"make a new plan: provision plan {saved.spec_file} --out PLAN",
            )
        plan = saved or current
        print(render_plan_table(plan), end="")
        if not plan.has_changes:
            return 0
        engine.check_destroy_all()  # before the lease: a refused apply leaves nothing behind
        engine.acquire()
        deadline = time.monotonic() + args.timeout

        def between(_n: int) -> None:
            if time.monotonic() > deadline:
                engine.stop.set()
            engine.renew()
            time.sleep(args.interval)

        passes = engine.converge(max_passes=1_000_000, scope=plan, between=between)
        engine.release()
        if engine.stop.is_set():
            raise ProvisionError(
                f"apply did not finish within {args.timeout:g}s",
                hint="see `provision status`; run apply again or the daemon",
            )
        print(f"Apply complete after {passes} pass{'es' if passes != 1 else ''}.")
        return 0
    finally:
        store.close()


def run_daemon(args: argparse.Namespace) -> int:
    spec = load_cluster_spec(args.cluster)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("provision.reconcile")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return _run_daemon(args, spec)
    finally:
        log.removeHandler(handler)


def _run_daemon(args: argparse.Namespace, spec: ClusterSpec) -> int:
    options = DaemonOptions(
        interval=args.interval if args.interval is not None else spec.daemon.interval,
        resync=args.resync if args.resync is not None else spec.daemon.resync,
        listen=args.listen or spec.daemon.listen,
        lease_ttl=args.lease,
        owner=args.owner,
        adopt=args.adopt,
    )
    options.check()  # before anything is opened or taken
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    store = open_store(spec, args.journal)
    clock = SystemClock()
    try:
        providers = _providers(spec, store, clock)
        if isinstance(
            store, EtcdStore
        ):  # several daemons share the journal: each owns a shard of the groups
            daemon: Daemon = ShardedDaemon(
                spec,
                providers,
                store,
                clock,
                options,
                stop=stop,
                reload=reloader(Path(args.cluster)),
            )
        else:
            daemon = Daemon(
                spec,
                providers,
                store,
                clock,
                options,
                stop=stop,
                reload=reloader(Path(args.cluster)),
            )
        return daemon.run()
    finally:
        store.close()


def _group_owners(store: AnyStore, cluster: str) -> dict[str, str]:
    """group -> the daemon that owns it (etcd, sharded), or {"": the lease holder} (one daemon)."""
    if isinstance(store, EtcdStore):
        holder = store.lease_holder(cluster)
        return {
            g: f"{owner} (epoch {token})"
            for g, (owner, token) in store.group_owners(cluster).items()
        } | ({"": holder} if holder else {})
    holder = store.lease_holder(cluster)
    return {"": holder} if holder else {}


def run_status(args: argparse.Namespace) -> int:
    spec = load_cluster_spec(args.cluster)
    engine, store = _open(args, spec, build=False)
    try:
        groups: list[dict[str, Any]] = []
        owners = _group_owners(store, spec.name)
        for group in engine.groups():
            removed = engine.is_removed(group)
            if removed and group.provider not in engine.providers:
                continue  # its provider cannot be opened from here (`provision down` says so)
            image, config = engine.desired(group)
            observation = engine.observe(group)
            machines = observation.machines
            if removed and not machines:
                continue
            groups.append(
                {
                    "group": group.name,
                    "removed": removed,
                    "provider": group.provider,
                    "owner": owners.get(group.name, owners.get("", "")),
                    "image": image,
                    "config": config,
                    "desired": group.desired,
                    "observed": len(machines),
                    "available": sum(1 for m in machines if m.condition is Condition.AVAILABLE),
                    "up_to_date": sum(1 for m in machines if m.config == config),
                    "machines": [
                        {
                            "id": m.ref,
                            "name": m.name,
                            "slot": m.slot,
                            "image": m.image,
                            "condition": m.condition.value,
                            "up_to_date": m.config == config,
                        }
                        for m in machines
                    ],
                }
            )
        body = {
            "cluster": spec.name,
            "journal": describe_store(store),
            "epoch": store.current_epoch(spec.name),
            "intents": store.intent_counts(spec.name),
            "groups": groups,
        }
    finally:
        store.close()
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(
        f"cluster {spec.name}  journal={body['journal']}  epoch={body['epoch']}  intents={body['intents']}"
    )
    for g in groups:
        if g["removed"]:
            print(
                f"\ngroup {g['group']}  removed from the spec: {g['observed']} machine(s) left to destroy (apply or the daemon does)"
            )
        else:
            print(
                f"\ngroup {g['group']}  {g['available']}/{g['desired']} available, {g['up_to_date']} up to date, {g['observed']} observed  image={g['image']}"
                f"  owner={g['owner'] or '-'}"
            )
        print(f"  {'MACHINE':<22} {'SLOT':<10} {'CONDITION':<10} {'CURRENT':<8} IMAGE")
        for m in g["machines"]:
            print(
                f"  {m['id']:<22} {m['slot']:<10} {m['condition']:<10} {'yes' if m['up_to_date'] else 'no':<8} {m['image']}"
            )
    return 0
