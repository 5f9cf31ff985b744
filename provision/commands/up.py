"""``provision up CLUSTER.yml`` and ``provision down CLUSTER.yml``: the main job.

``up`` builds each group's image if needed, applies the spec until every group has converged
(machines created, replaced and healthy), showing progress, then prints the cluster's status:
machines, image digest and the services each machine's agent reports. ``down`` destroys every
machine carrying the cluster's ownership tag and checks that none is left.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from provision.agent import AGENT_PORT, read_agent
from provision.clock import SystemClock
from provision.commands import add_journal_option, check_seconds
from provision.errors import ProvisionError
from provision.providers import get_target
from provision.reconcile.engine import Engine, PassResult
from provision.reconcile.image import GroupImages
from provision.reconcile.model import Condition, Machine
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_GROUP,
    InstanceState,
    list_all,
)
from provision.reconcile.registry import create_providers
from provision.reconcile.spec import ClusterSpec, GroupSpec, load_cluster_spec
from provision.reconcile.stores import open_store
from provision.reconcile.teardown import open_cluster_providers, scaled_to_zero, tear_down_cluster

Say = Callable[[str], None]


def register(subparsers: Any) -> None:
    up = subparsers.add_parser(
        "up",
        help="build, boot and converge a cluster (e.g. examples/local-cluster.yml), then show it",
        description="Build each group's image if needed, create and replace machines until the "
        "cluster matches its spec and every machine is healthy, then print its status.",
    )
    up.add_argument("cluster", help="cluster spec (YAML)")
    up.add_argument(
        "--timeout", type=float, default=900.0, help="give up after SECONDS (default 900)"
    )
    up.add_argument(
        "--interval", type=float, default=1.0, help="seconds between passes (default 1)"
    )
    up.add_argument("--json", action="store_true", help="print the final status as JSON")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    add_journal_option(up)
    up.set_defaults(func=run_up)

    down = subparsers.add_parser(
        "down",
        help="destroy every machine of a cluster",
        description="Destroy every machine carrying the cluster's ownership tag (in any group, "
        "running or not) and check that none is left.",
    )
    down.add_argument("cluster", help="cluster spec (YAML)")
    down.add_argument(
        "--timeout", type=float, default=300.0, help="give up after SECONDS (default 300)"
    )
    down.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    add_journal_option(down)
    down.add_argument(
        "--adopt", action="store_true", help="also destroy machines another journal created"
    )
    down.set_defaults(func=run_down)


def _progress(quiet: bool) -> Say:
    started = time.monotonic()

    def say(message: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def _base(spec: ClusterSpec) -> Path:
    return Path(spec.source_file).parent if not spec.source_file.startswith("<") else Path.cwd()


# ------------------------------------------------------------------------------------ up


def check_targets(spec: ClusterSpec) -> None:
    """The programs every group's target needs, before anything is built or booted."""
    from provision.runner import require_tools

    require_tools(
        tool for g in spec.groups for tool in get_target(spec.providers[g.provider].type).tools
    )


def _summary(machines: tuple[Machine, ...], config: str) -> str:
    counts = {c: sum(1 for m in machines if m.condition is c) for c in Condition}
    parts = [f"{n} {c.value}" for c, n in counts.items() if n]
    current = sum(1 for m in machines if m.config == config)
    return f"{len(machines)} machine{'s' if len(machines) != 1 else ''} ({', '.join(parts) or 'none'}), {current} up to date"


def converge_cluster(engine: Engine, say: Say, *, timeout: float, interval: float) -> int:
    """Passes until every group converged; report what changed. Returns the pass count."""
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    passes = 0
    while True:
        passes += 1
        groups = engine.groups()  # the spec's, then those removed from it (destroyed)
        results = engine.reconcile()
        for group, result in zip(groups, results, strict=True):
            _report(engine, group, result, last, say)
        if all(r.converged for r in results):
            return passes
        if time.monotonic() > deadline:
            consoles = _consoles(engine)
            raise ProvisionError(
                f"the cluster did not converge within {timeout:g}s",
                hint=(
                    f"machines not healthy or ended; their consoles: {', '.join(consoles)}; "
                    if consoles
                    else ""
                )
                + f"see `provision status {engine.spec.source_file}`; `provision up` again resumes",
            )
        engine.renew()
        time.sleep(interval)


def _consoles(engine: Engine) -> list[str]:
    """Where the machines that are not available (and the last ones that ended) printed."""
    found = []
    for group in engine.spec.groups:
        target = get_target(engine.spec.providers[group.provider].type)
        provider = engine.providers[group.provider]
        unavailable = {
            m.id
            for m in engine.observe(group).machines
            if m.id is not None and m.condition is not Condition.AVAILABLE
        }
        listed = list_all(provider, {TAG_CLUSTER: engine.spec.name, TAG_GROUP: group.name})[0]
        dead = sorted(
            (i for i in listed if i.state is InstanceState.TERMINATED), key=lambda i: -i.created_at
        )
        chosen = [i for i in listed if i.id in unavailable] + dead[:3]  # ended: a panic, a poweroff
        found += target.consoles(provider, chosen)
    return found


def _report(
    engine: Engine, group: GroupSpec, result: PassResult, last: dict[str, str], say: Say
) -> None:
    _image, config = engine.desired(group)
    observation = engine.observe(group)
    line = _summary(observation.machines, config)
    actions = []
    if result.created:
        actions.append(f"created {result.created}")
    if result.destroyed:
        actions.append(f"destroyed {result.destroyed}")
    if result.recovered:
        actions.append(f"resumed {result.recovered}")
    for error in result.errors:
        actions.append(f"error: {error}")
    text = line + ("  [" + "; ".join(actions) + "]" if actions else "")
    if last.get(group.name) != text:
        say(f"{group.name}: {text}")
        last[group.name] = text


def collect_status(engine: Engine) -> dict[str, Any]:
    """The cluster's machines, each with its address and what its agent says."""
    groups = []
    for group in engine.spec.groups:
        provider = engine.providers[group.provider]
        target = get_target(engine.spec.providers[group.provider].type)
        _image, config = engine.desired(group)
        observation = engine.observe(group)
        instances = {
            i.id: i
            for i in list_all(provider, {TAG_CLUSTER: engine.spec.name, TAG_GROUP: group.name})[0]
        }
        port = group.health.port or AGENT_PORT
        declared = target.declared_ports(group.properties)
        machines = []
        for m in observation.machines:
            instance = instances.get(m.id or "")
            where = provider.address(instance, port) if instance is not None else None
            agent = read_agent(*where) if where is not None else None
            published = {}
            for guest in declared:
                found = provider.address(instance, guest) if instance is not None else None
                if found is not None:
                    published[str(guest)] = f"{found[0]}:{found[1]}"
            machines.append(
                {
                    "machine": m.ref,
                    "condition": m.condition.value,
                    "up_to_date": m.config == config,
                    "image": m.image,
                    "agent": f"{where[0]}:{where[1]}" if where else None,
                    "agent_digest": agent.digest if agent else None,
                    "services": dict(agent.services) if agent else None,
                    "ports": published,
                }
            )
        groups.append(
            {
                "group": group.name,
                "provider": group.provider,
                "image": engine.images.image(group).id,
                "source": group.image,
                "desired": group.desired,
                "machines": machines,
            }
        )
    return {"cluster": engine.spec.name, "groups": groups}


def render_status(status: Mapping[str, Any]) -> str:
    lines = []
    for g in status["groups"]:
        healthy = sum(1 for m in g["machines"] if m["condition"] == Condition.AVAILABLE.value)
        lines.append(
            f"group {g['group']}  {healthy}/{g['desired']} healthy  image {g['image']}  ({g['source']})"
        )
        lines.append(
            f"  {'MACHINE':<26} {'STATE':<10} {'AGENT':<16} {'PORTS':<16} {'IMAGE':<19} SERVICES"
        )
        for m in g["machines"]:
            services = m["services"]
            shown = (
                " ".join(f"{k}={v}" for k, v in sorted(services.items()))
                if services is not None
                else "(agent not answering)"
            )
            image = m["image"][:19] + ("" if m["up_to_date"] else " (old)")
            ports = (
                " ".join(
                    f"{guest}->{where.rsplit(':', 1)[1]}" for guest, where in m["ports"].items()
                )
                or "-"
            )
            lines.append(
                f"  {m['machine']:<26} {m['condition']:<10} {m['agent'] or '-':<16} {ports:<16} {image:<19} {shown}"
            )
        lines.append(
            "  (AGENT and PORTS: 127.0.0.1 ports forwarded to the agent's 7080 and to the declared guest ports)"
        )
    return "\n".join(lines) + "\n"


def run_up(args: argparse.Namespace) -> int:
    check_seconds("--timeout", args.timeout, zero=False)
    check_seconds("--interval", args.interval, zero=True)
    say = _progress(args.quiet)
    spec = load_cluster_spec(args.cluster)
    check_targets(spec)
    clock = SystemClock()
    providers = create_providers(spec, clock)
    store = open_store(spec, args.journal)  # before any build
    started = time.monotonic()
    try:
        images = GroupImages(spec, providers, build=True, progress=say)
        for group in spec.groups:
            say(f"group {group.name}: image {images.image(group).id}")
        # groups removed from the spec may live on providers no group uses now: the journal knows them
        providers = {**open_cluster_providers(spec, store, clock).providers, **providers}
        engine = Engine(spec, providers, store, clock, owner=f"up:{os.getpid()}", images=images)
        engine.acquire()
        try:
            passes = converge_cluster(engine, say, timeout=args.timeout, interval=args.interval)
        except KeyboardInterrupt:
            engine.stop.set()
            print(
                f"interrupted: machines started so far keep running; remove them with `provision down {args.cluster}`",
                file=sys.stderr,
            )
            return 130
        finally:
            engine.release()
        status = collect_status(engine)
    finally:
        store.close()
    status["seconds"] = round(time.monotonic() - started, 1)
    status["passes"] = passes
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    total = sum(g["desired"] for g in status["groups"])
    print(
        f"Cluster {spec.name} is up: {total} machine{'s' if total != 1 else ''} healthy "
        f"({status['seconds']}s, {passes} pass{'es' if passes != 1 else ''}).\n"
    )
    print(render_status(status), end="")
    print(f"\nRemove it with: provision down {args.cluster}")
    return 0


# ---------------------------------------------------------------------------------- down


def run_down(args: argparse.Namespace) -> int:
    check_seconds("--timeout", args.timeout, zero=False)
    say = _progress(args.quiet)
    spec = load_cluster_spec(args.cluster)
    clock = SystemClock()
    store = open_store(spec, args.journal)
    try:
        # Every provider the spec or the journal ever used; every group scaled to zero through
        # the engine (journaled, pending creates resumed and undone); no image is built for that.
        opened = open_cluster_providers(spec, store, clock)
        engine = Engine(
            scaled_to_zero(spec),
            opened.providers,
            store,
            clock,
            owner=f"down:{os.getpid()}",
            images={g.name: "-" for g in spec.groups},
            allow_destroy_all=True,
            adopt=args.adopt,
        )
        engine.acquire()
        try:
            report = tear_down_cluster(engine, opened.unreachable, timeout=args.timeout, say=say)
        finally:
            engine.release()
    finally:
        store.close()
    if not report.complete:
        raise ProvisionError(
            f"cluster {spec.name} is not down: {report.destroyed} destroyed, left: {report.describe_left()}",
            hint="run `provision down` again once the providers answer",
        )
    print(
        f"Cluster {spec.name} is down: {report.destroyed} machine{'s' if report.destroyed != 1 else ''} destroyed, none left."
    )
    return 0
