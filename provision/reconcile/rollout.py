"""The pure decisions: which machines a group keeps, replaces, destroys and creates.

``plan_targets`` works out the end state (the diff a plan shows); ``plan_step`` works out what may
happen *now* without breaking the surge ceiling (total <= desired + maxSurge) or the
availability floor (available >= desired - maxUnavailable), and with remediation held back by
the maxUnhealthy breaker and maxInFlight. Victims are chosen in a fixed order: out of date, then
unhealthy, then oldest, ties by name.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from provision.reconcile.model import Condition, Creation, Destruction, Machine, Step
from provision.reconcile.spec import GroupSpec, Strategy

NOT_AVAILABLE = (Condition.FAILED, Condition.UNHEALTHY, Condition.STARTING)


@dataclass(frozen=True)
class Targets:
    """The end state: what goes, why, and how many (and which pet slots) must be created."""

    outdated: tuple[Machine, ...]  # to replace (rolling) — destroyed once replaced
    excess: tuple[Machine, ...]  # to destroy: scale down, orphaned pet slots, duplicates
    remediate: tuple[Machine, ...]  # up to date but failed: destroy and recreate
    missing: tuple[str, ...]  # pet slots to fill ("" entries for cattle)
    notes: tuple[str, ...]


def victim_key(
    machine: Machine, config: str, covered: Collection[str] = ()
) -> tuple[int, int, int, float, str]:
    """Sort key: out of date first, then (pets) slots already covered, unhealthy, oldest, name."""
    return (
        0 if machine.config != config else 1,
        0 if machine.slot in covered else 1,
        machine.condition.rank,
        machine.created_at,
        machine.name,
    )


def _keeper_key(machine: Machine) -> tuple[int, float, str]:
    """Best machine to keep in a slot: healthiest, then newest, then name."""
    return (-machine.condition.rank, -machine.created_at, machine.name)


def plan_targets(group: GroupSpec, config: str, machines: Sequence[Machine]) -> Targets:
    machines = [m for m in machines if not m.deleting]  # already going
    rolling = group.update.strategy is Strategy.ROLLING and not group.update.paused
    notes: list[str] = []
    if group.update.paused:
        notes.append("update paused")
    outdated: list[Machine] = []
    excess: list[Machine] = []
    current: list[Machine] = []
    missing: list[str] = []
    if group.members is not None:
        members = set(group.members)
        by_slot: dict[str, list[Machine]] = {}
        for m in machines:
            if m.slot not in members:
                excess.append(m)
            else:
                by_slot.setdefault(m.slot, []).append(m)
        for slot in group.members:
            here = by_slot.get(slot, [])
            fresh = sorted((m for m in here if m.config == config), key=_keeper_key)
            old = [m for m in here if m.config != config]
            if fresh:
                current.append(fresh[0])
                excess.extend(fresh[1:])
                outdated.extend(old if rolling else [])
                excess.extend([] if rolling else old)
            elif old and not rolling:
                keep = sorted(old, key=_keeper_key)
                current.append(keep[0])
                excess.extend(keep[1:])
            else:
                outdated.extend(old)
                missing.append(slot)
    else:
        fresh = [m for m in machines if m.config == config]
        old = [m for m in machines if m.config != config]
        want = group.desired
        if rolling:
            outdated.extend(old)
        else:
            keep_old = sorted(old, key=lambda m: victim_key(m, config), reverse=True)[
                : max(0, want)
            ]
            excess.extend(m for m in old if m not in keep_old)
            want = max(0, want - len(keep_old))
            current.extend(keep_old)
        ordered = sorted(fresh, key=lambda m: victim_key(m, config))
        surplus = max(0, len(fresh) - want)
        excess.extend(ordered[:surplus])
        current.extend(ordered[surplus:])
        missing.extend([""] * max(0, want - len(fresh)))
    remediate = [m for m in current if m.config == config and m.condition is Condition.FAILED]
    breaker = _breaker_open(group, machines)
    if remediate and breaker:
        notes.append(breaker)
        remediate = []
    return Targets(tuple(outdated), tuple(excess), tuple(remediate), tuple(missing), tuple(notes))


def _breaker_open(group: GroupSpec, machines: Sequence[Machine]) -> str:
    """A message when more machines are unhealthy than maxUnhealthy allows, else ''."""
    unhealthy = sum(1 for m in machines if m.condition in (Condition.FAILED, Condition.UNHEALTHY))
    limit = group.health.max_unhealthy.resolve(group.desired, round_up=False)
    if unhealthy > limit:
        return f"remediation held: {unhealthy} unhealthy > maxUnhealthy {group.health.max_unhealthy} ({limit})"
    return ""


def plan_step(
    group: GroupSpec,
    config: str,
    machines: Sequence[Machine],
    *,
    allowed: Collection[str] | None = None,
    create_budget: int | None = None,
) -> Step:
    """The actions allowed now. ``allowed`` limits destroys to those machine ids (a saved plan's
    scope); ``create_budget`` caps creates."""
    targets = plan_targets(group, config, machines)
    desired = group.desired
    surge, unavailable = group.update.bounds(desired)
    ceiling = desired + surge
    floor = desired - unavailable
    total = len(machines)
    available = sum(1 for m in machines if m.condition is Condition.AVAILABLE and not m.deleting)
    budget = available - floor  # how many available machines may go now

    def permitted(m: Machine) -> bool:
        return m.id is not None and (allowed is None or m.id in allowed)

    covered: set[str] = (
        set()
    )  # pets: slots whose replacement is up, so their old machine goes first
    if group.members is not None:
        covered = {
            m.slot for m in machines if m.config == config and m.condition is Condition.AVAILABLE
        }
    destroys: list[Destruction] = []
    # Remediation: failed machines are not available, so they never cost availability; the
    # number in flight (destroyed, replacement not yet healthy) is capped by maxInFlight.
    in_flight = max(0, desired - total) + sum(
        1 for m in machines if m.config == config and m.condition is Condition.STARTING
    )
    for m in sorted(targets.remediate, key=lambda m: victim_key(m, config)):
        if in_flight >= group.health.max_in_flight or not permitted(m):
            continue
        destroys.append(Destruction(m, "unhealthy", remediation=True))
        in_flight += 1
    # Out of date and excess machines, in victim order; available ones cost budget.
    candidates = [(m, "scale down") for m in targets.excess] + [
        (m, "out of date") for m in targets.outdated
    ]
    candidates.sort(key=lambda pair: victim_key(pair[0], config, covered))
    remaining_after = total
    for m, reason in candidates:
        if not permitted(m):
            continue
        if m.condition is Condition.AVAILABLE:
            if budget <= 0:
                continue
            budget -= 1
        destroys.append(Destruction(m, reason))
        remaining_after -= 1
    room = ceiling - total  # negative when above the ceiling: destroys must first make room
    creates = [
        Creation(d.machine.slot if group.members is not None else "", "replace unhealthy")
        for d in destroys
        if d.remediation
    ]
    creates += [Creation(slot, "missing" if slot else "scale up") for slot in targets.missing]
    gone = {d.machine.id for d in destroys}
    occupied = {m.slot for m in machines if m.id not in gone}
    creates.sort(key=lambda c: bool(c.slot) and c.slot in occupied)  # empty slots first
    if create_budget is not None:
        creates = creates[: max(0, create_budget)]
    notes = list(targets.notes)
    if len(creates) > room + len(destroys):
        notes.append(f"creates held at the surge ceiling {ceiling}")
    return Step(tuple(destroys), tuple(creates[: max(0, room + len(destroys))]), room, tuple(notes))
