"""Plans: the structured diff between a cluster spec and the machines that exist.

Per group and machine: create / replace (with the field or digest that triggered it) / destroy /
nothing. A plan records a digest of what it observed, so ``apply`` can refuse a plan whose
observed state has changed since it was made.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from provision.errors import ProvisionError
from provision.fsutil import sha256_digest
from provision.reconcile.model import Condition, Machine, Observation
from provision.reconcile.rollout import plan_targets
from provision.reconcile.spec import GroupSpec

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
    def from_json(cls, text: str) -> ClusterPlan:
        try:
            body = json.loads(text)
            if body.pop("format", None) != PLAN_FORMAT:
                raise ValueError(f"not a {PLAN_FORMAT} document")
            groups = tuple(
                GroupPlan(**{**g, "changes": tuple(MachineChange(**c) for c in g["changes"]), "notes": tuple(g["notes"]),
                             "removed": bool(g.get("removed", False))})
                for g in body.pop("groups")
            )
            return cls(groups=groups, **body)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProvisionError(f"not a saved plan: {exc}", hint="make one with: provision plan CLUSTER.yml --out PLAN") from exc


def digest_observations(observations: Sequence[Observation]) -> str:
    """What a plan depends on: each machine's id, slot, config and whether it is failed."""
    canon = [
        [o.group, [[m.ref, m.slot, m.config, m.condition is Condition.FAILED] for m in o.machines]]
        for o in sorted(observations, key=lambda o: o.group)
    ]
    return sha256_digest(json.dumps(canon).encode())


Trigger = Callable[[Machine], str]


def plan_group(group: GroupSpec, image: str, config: str, observation: Observation, trigger: Trigger) -> GroupPlan:
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
        changes.append(MachineChange("create", slot, "(new)", "missing" if slot else "scale up", "", config))
    for m in machines:
        if m.deleting:
            changes.append(MachineChange("destroy", m.slot, m.ref, "destroy in flight (re-driven)", m.config, ""))
        elif m.ref not in decided:
            reason = "create in flight" if m.id is None else m.condition.value
            if m.config != config:
                reason = f"out of date ({group.update.strategy.value}{', paused' if group.update.paused else ''})"
            changes.append(MachineChange("nothing", m.slot, m.ref, reason, m.config, m.config))
    order = {a: i for i, a in enumerate(ACTIONS)}
    changes.sort(key=lambda c: (order[c.action], c.slot, c.machine))
    return GroupPlan(group.name, group.provider, image, config, group.desired, len(machines), tuple(changes), targets.notes)


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
            lines.append(f"\ngroup {g.group}  provider={g.provider}  (removed from the spec)  observed={g.observed}  [{summary or 'empty'}]")
        else:
            lines.append(f"\ngroup {g.group}  provider={g.provider}  desired={g.desired} observed={g.observed}  image={g.image}  [{summary or 'empty'}]")
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
