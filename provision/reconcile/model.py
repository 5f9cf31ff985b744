"""What the planner sees: machines as observed (cloud list + journal + health), and its output."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Condition(StrEnum):
    """A machine's health class, in the order the planner prefers to keep them (worst first)."""

    FAILED = "failed"  # unhealthy past its timeout (or never healthy past startup): remediable
    UNHEALTHY = "unhealthy"  # failing checks, not yet for long enough
    STARTING = "starting"  # created, not yet healthy, inside its startup timeout
    AVAILABLE = "available"  # passing health checks (or running, when no checks are declared)

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Condition.FAILED: 0, Condition.UNHEALTHY: 0, Condition.STARTING: 1, Condition.AVAILABLE: 2}


@dataclass(frozen=True)
class Machine:
    """One machine of a group. ``id`` is None for a create whose call has not returned yet."""

    id: str | None
    name: str
    slot: str
    config: str
    image: str
    created_at: float
    condition: Condition
    key: str = ""
    visible: bool = True  # False: known from the journal, not yet in the provider's list
    deleting: bool = (
        False  # a destroy intent is pending: it still counts, but is neither kept nor available
    )
    journal: str = (
        ""  # the id of the journal that created it ("" when untagged: made before journals had ids)
    )

    @property
    def ref(self) -> str:
        return self.id or f"(pending {self.key})"


@dataclass(frozen=True)
class Observation:
    """A group's observed state at one moment, and how many list pages it took."""

    group: str
    machines: tuple[Machine, ...]
    pages: int = 0
    unhealthy_since: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Creation:
    slot: str  # a member name (pets) or "" for a fresh cattle slot
    reason: str


@dataclass(frozen=True)
class Destruction:
    machine: Machine
    reason: str
    remediation: bool = False


@dataclass(frozen=True)
class Step:
    """What to do now: destroys first (each may free room for a create), then creates."""

    destroys: tuple[Destruction, ...]
    creates: tuple[Creation, ...]
    room: int  # creates allowed before any destroy succeeds (negative: above the ceiling)
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.destroys and not self.creates
