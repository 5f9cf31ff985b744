"""Plans: the structured diff between a cluster spec and the machines that exist.

Per group and machine: create / replace (with the field or digest that triggered it) / destroy /
nothing. A plan records a digest of what it observed, so ``apply`` can refuse a plan whose
observed state has changed since it was made.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from provision.errors import ProvisionError
from provision.fsutil import sha256_digest
from provision.reconcile.model import Condition, Machine, Observation
from provision.reconcile.rollout import plan_targets
from provision.reconcile.spec import ClusterSpec, GroupSpec

PLAN_FORMAT = "provision.plan/v1"
ACTIONS = ("create", "replace", "destroy", "nothing")


class StalePlanError(ProvisionError):
    """The machines changed since the plan was made."""

    exit_code = 3


@dataclass(frozen=True)
class MachineChange:
    action: str  # one of ACTIONS
    slot: str
    machine: str  # instance id, "(new)" or "(pending KEY)"
    reason: str
    config_before: str = ""
    config_after: str = ""


@dataclass(frozen=True)
class GroupPlan:
    group: str
    provider: str
    image: str
    config: str
    desired: int
    observed: int
    changes: tuple[MachineChange, ...]
    notes: tuple[str, ...] = ()
    removed: bool = False  # the spec no longer declares the group: all its machines go

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def has_changes(self) -> bool:
        return any(c.action != "nothing" for c in self.changes)


@dataclass(frozen=True)
class ClusterPlan:
    cluster: str
    spec_file: str
    spec_digest: str
    spec_text: str
    observed_digest: str
    groups: tuple[GroupPlan, ...]
    journal: str = ""  # the journal the plan was made against (absolute): apply uses the same one

    @property
    def has_changes(self) -> bool:
        return any(g.has_changes for g in self.groups)

    def scope(self, group: str) -> tuple[set[str], int]:
        """(machine ids the plan may destroy, how many machines it may create) for ``group``."""
        for g in self.groups:
            if g.group == group:
                ids = {c.machine for c in g.changes if c.action in ("replace", "destroy")}
                return ids, sum(1 for c in g.changes if c.action in ("create", "replace"))
        return set(), 0

    def to_json(self) -> str:
        body = {"format": PLAN_FORMAT, **asdict(self)}
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> ClusterPlan:
        """A plan saved by :meth:`to_json`, checked strictly (every field, its type and its
        range); anything else is a PlanError naming the field."""
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise PlanError(f"{source}: not a saved plan: not JSON ({exc})") from exc
        return _check_plan(body, source)


class PlanError(ProvisionError):
    """A saved plan that is not one, or whose fields are nonsense."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="make a new one with: provision plan CLUSTER.yml --out PLAN")


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CONFIG = re.compile(r"([0-9a-f]{16})?")
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")


class _PlanReader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> NoReturn:
        raise PlanError(f"{self.source}: not a valid saved plan: {where}: {message}")

    def fields(self, value: Any, where: str, names: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where or "(top)", "must be an object")
        for key in sorted(set(value) - names):
            self.fail(f"{where}.{key}" if where else key, "unknown field")
        for key in sorted(names - set(value)):
            self.fail(f"{where}.{key}" if where else key, "missing")
        return value

    def text(
        self, value: Any, where: str, pattern: re.Pattern[str] | None = None, limit: int = 4096
    ) -> str:
        if not isinstance(value, str) or len(value) > limit:
            self.fail(where, f"must be a string of at most {limit} characters")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(where, f"{value[:80]!r} is not of the form {pattern.pattern}")
        return value

    def count(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
            self.fail(where, "must be a whole number from 0 to 1000000")
        return value

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, "must be true or false")
        return value

    def items(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list) or len(value) > 1_000_000:
            self.fail(where, "must be a list")
        return value


def _check_plan(body: Any, source: str) -> ClusterPlan:
    r = _PlanReader(source)
    top = r.fields(body, "", {"format", *ClusterPlan.__dataclass_fields__})
    if top["format"] != PLAN_FORMAT:
        r.fail("format", f"must be {PLAN_FORMAT!r}")
    spec_text = r.text(top["spec_text"], "spec_text", limit=16 * 1024 * 1024)
    spec_digest = r.text(top["spec_digest"], "spec_digest", _DIGEST)
    if sha256_digest(spec_text.encode()) != spec_digest:
        r.fail("spec_text", "does not match spec_digest (the plan was edited)")
    spec_file = r.text(top["spec_file"], "spec_file")
    if not spec_file.startswith("/"):
        r.fail(
            "spec_file", "must be an absolute path (plans made by `provision plan --out` store one)"
        )
    groups: list[GroupPlan] = []
    for i, raw in enumerate(r.items(top["groups"], "groups")):
        where = f"groups[{i}]"
        g = r.fields(raw, where, set(GroupPlan.__dataclass_fields__))
        changes: list[MachineChange] = []
        for j, item in enumerate(r.items(g["changes"], f"{where}.changes")):
            at = f"{where}.changes[{j}]"
            c = r.fields(item, at, set(MachineChange.__dataclass_fields__))
            if c["action"] not in ACTIONS:
                r.fail(f"{at}.action", f"must be one of {', '.join(ACTIONS)}")
            changes.append(
                MachineChange(
                    c["action"],
                    r.text(c["slot"], f"{at}.slot"),
                    r.text(c["machine"], f"{at}.machine"),
                    r.text(c["reason"], f"{at}.reason"),
                    r.text(c["config_before"], f"{at}.config_before", limit=256),
                    r.text(c["config_after"], f"{at}.config_after", limit=256),
                )
            )
        groups.append(
            GroupPlan(
                r.text(g["group"], f"{where}.group", _NAME),
                r.text(g["provider"], f"{where}.provider", _NAME),
                r.text(g["image"], f"{where}.image"),
                r.text(g["config"], f"{where}.config", _CONFIG),
                r.count(g["desired"], f"{where}.desired"),
                r.count(g["observed"], f"{where}.observed"),
                tuple(changes),
                tuple(
                    r.text(n, f"{where}.notes[{k}]")
                    for k, n in enumerate(r.items(g["notes"], f"{where}.notes"))
                ),
                r.flag(g["removed"], f"{where}.removed"),
            )
        )
    journal = r.text(top["journal"], "journal")
    if journal and not journal.startswith("/"):
        r.fail(
            "journal", "must be an absolute path (plans made by `provision plan --out` store one)"
        )
    return ClusterPlan(
        r.text(top["cluster"], "cluster", _NAME),
        spec_file,
        spec_digest,
        spec_text,
        r.text(top["observed_digest"], "observed_digest", _DIGEST),
        tuple(groups),
        journal,
    )


def check_plan_matches_spec(plan: ClusterPlan, spec: ClusterSpec, source: str) -> None:
    """Refuse a plan whose cluster or groups are not those of the spec it carries."""
    r = _PlanReader(source)
    if plan.cluster != spec.name:
        r.fail("cluster", f"{plan.cluster!r} is not the spec's cluster {spec.name!r}")
    groups = {g.name: g for g in spec.groups}
    for i, g in enumerate(plan.groups):
        group = groups.get(g.group)
        if g.removed:  # a group the spec no longer declares: its machines are to go
            if group is not None or g.desired != 0:
                r.fail(
                    f"groups[{i}]",
                    f"group {g.group!r} is marked removed but the spec declares it or it wants machines",
                )
            continue
        if group is None:
            r.fail(f"groups[{i}].group", f"the spec has no group {g.group!r}")
        if g.provider != group.provider or g.desired != group.desired:
            r.fail(
                f"groups[{i}]", f"provider or desired size differ from the spec's group {g.group!r}"
            )


def digest_observations(observations: Sequence[Observation]) -> str:
    """What a plan depends on: each machine's id, slot, config and whether it is failed."""
    canon = [
        [o.group, [[m.ref, m.slot, m.config, m.condition is Condition.FAILED] for m in o.machines]]
        for o in sorted(observations, key=lambda o: o.group)
    ]
    return sha256_digest(json.dumps(canon).encode())


Trigger = Callable[[Machine], str]


def plan_group(
    group: GroupSpec, image: str, config: str, observation: Observation, trigger: Trigger
) -> GroupPlan:
    """The diff for one group: every machine with its action and the reason for it."""
    machines = observation.machines
    targets = plan_targets(group, config, machines)
    changes: list[MachineChange] = []
    decided: set[str] = set()
    for m in targets.outdated:
        changes.append(MachineChange("replace", m.slot, m.ref, trigger(m), m.config, config))
        decided.add(m.ref)
    for m in targets.remediate:
        changes.append(MachineChange("replace", m.slot, m.ref, "unhealthy", m.config, config))
        decided.add(m.ref)
    for m in targets.excess:
        if group.members is not None and m.slot not in group.members:
            reason = "slot no longer a member"
        elif group.members is not None:
            reason = "duplicate in slot"
        else:
            reason = "scale down"
        changes.append(MachineChange("destroy", m.slot, m.ref, reason, m.config, ""))
        decided.add(m.ref)
    replaced_slots = {m.slot for m in targets.outdated}
    if group.members is not None:
        new_slots = [s for s in targets.missing if s not in replaced_slots]
    else:
        new_slots = [""] * max(0, len(targets.missing) - len(targets.outdated))
    for slot in new_slots:
        changes.append(
            MachineChange("create", slot, "(new)", "missing" if slot else "scale up", "", config)
        )
    for m in machines:
        if m.deleting:
            changes.append(
                MachineChange(
                    "destroy", m.slot, m.ref, "destroy in flight (re-driven)", m.config, ""
                )
            )
        elif m.ref not in decided:
            reason = "create in flight" if m.id is None else m.condition.value
            if m.config != config:
                reason = f"out of date ({group.update.strategy.value}{', paused' if group.update.paused else ''})"
            changes.append(MachineChange("nothing", m.slot, m.ref, reason, m.config, m.config))
    order = {a: i for i, a in enumerate(ACTIONS)}
    changes.sort(key=lambda c: (order[c.action], c.slot, c.machine))
    return GroupPlan(
        group.name,
        group.provider,
        image,
        config,
        group.desired,
        len(machines),
        tuple(changes),
        targets.notes,
    )


def describe_trigger(
    machine: Machine,
    image: str,
    properties: Mapping[str, Any],
    known: Callable[[str], tuple[str, dict[str, Any]] | None],
) -> str:
    """Why ``machine`` is out of date: the image, the first differing property, or the digest."""
    if machine.image and machine.image != image:
        return f"image: {machine.image} -> {image}"
    before = known(machine.config)
    if before is not None:
        old = before[1]
        for key in sorted(set(old) | set(properties)):
            if old.get(key) != properties.get(key):
                return f"properties.{key}: {json.dumps(old.get(key))} -> {json.dumps(properties.get(key))}"
    return f"config: {machine.config or '(untagged)'} -> (new digest)"


def render_plan_table(plan: ClusterPlan, *, verbose: bool = False) -> str:
    """A readable table: one line per change (unchanged machines only with ``verbose``)."""
    lines = [f"cluster {plan.cluster}  (observed {plan.observed_digest[:19]})"]
    for g in plan.groups:
        summary = ", ".join(f"{g.count(a)} {a}" for a in ACTIONS if g.count(a))
        if g.removed:
            lines.append(
                f"\ngroup {g.group}  provider={g.provider}  (removed from the spec)  observed={g.observed}  [{summary or 'empty'}]"
            )
        else:
            lines.append(
                f"\ngroup {g.group}  provider={g.provider}  desired={g.desired} observed={g.observed}  image={g.image}  [{summary or 'empty'}]"
            )
        rows = [c for c in g.changes if verbose or c.action != "nothing"]
        if rows:
            lines.append(f"  {'ACTION':<8} {'SLOT':<14} {'MACHINE':<22} REASON")
            for c in rows:
                lines.append(f"  {c.action:<8} {c.slot or '-':<14} {c.machine:<22} {c.reason}")
        for note in g.notes:
            lines.append(f"  note: {note}")
    total = {a: sum(g.count(a) for g in plan.groups) for a in ACTIONS}
    lines.append(
        "\nPlan: " + ", ".join(f"{total[a]} to {a}" for a in ACTIONS[:3]) + "."
        if plan.has_changes
        else "\nNo changes: the machines match the spec."
    )
    return "\n".join(lines) + "\n"
