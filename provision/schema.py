"""Declared schemas for the free-form mappings a target owns: a provider's ``options`` and a
group's ``properties`` in a cluster spec.

A target declares each key once, as a :class:`Field` (what it must be, in words, and a parser
that returns the checked value or None); the cluster-spec loader checks the mapping against it
and reports every problem with file, line, column and key path, as it does for its own keys.
Unknown keys are errors with a "did you mean" suggestion unless the schema is ``open``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Parser = Callable[[Any], Any]  # the checked value, or None when it is not acceptable


@dataclass(frozen=True)
class Field:
    """One key of a schema: ``what`` completes "must be ..." in an error message."""

    what: str
    parse: Parser
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Schema:
    """The keys a mapping may have. ``open``: keys not listed are passed through unchecked."""

    fields: Mapping[str, Field] = field(default_factory=dict)
    open: bool = False


@dataclass(frozen=True)
class Violation:
    """One problem: the key path below the mapping (``("mem",)``), and what is wrong."""

    path: tuple[str | int, ...]
    message: str
    at_key: bool = False


def check_mapping(schema: Schema, value: Mapping[str, Any]) -> list[Violation]:
    """Every problem of ``value`` against ``schema`` (empty when it conforms)."""
    import difflib

    problems: list[Violation] = []
    for key, item in value.items():
        spec = schema.fields.get(str(key))
        if spec is None:
            if not schema.open:
                close = difflib.get_close_matches(str(key), sorted(schema.fields), n=1)
                known = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else "known: " + (", ".join(sorted(schema.fields)) or "none")
                )
                problems.append(Violation((str(key),), f"unknown key ({known})", at_key=True))
            continue
        if spec.parse(item) is None:
            problems.append(Violation((str(key),), f"must be {spec.what}, not {item!r}"))
    for key, spec in sorted(schema.fields.items()):
        if spec.required and key not in value:
            problems.append(Violation((), f"missing required key {key!r} ({spec.what})"))
    return problems


# -- parsers the targets share ------------------------------------------------------------------


def integer(low: int, high: int) -> Parser:
    def parse(value: Any) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return value if ok else None

    return parse


def number(low: float, high: float) -> Parser:
    def parse(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return (
            float(value) if low <= value <= high else None
        )  # compared first: 10**400 has no float

    return parse


def one_of(*choices: str) -> Parser:
    def parse(value: Any) -> str | None:
        return value if isinstance(value, str) and value in choices else None

    return parse


def text(pattern: str | None = None, max_len: int = 4096) -> Parser:
    compiled = re.compile(pattern) if pattern else None

    def parse(value: Any) -> str | None:
        if not isinstance(value, str) or len(value) > max_len:
            return None
        if compiled is not None and not compiled.fullmatch(value):
            return None
        return value

    return parse


def boolean(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def list_of(item: Parser, max_items: int = 256) -> Parser:
    def parse(value: Any) -> list[Any] | None:
        if not isinstance(value, list) or len(value) > max_items:
            return None
        parsed = [item(v) for v in value]
        return None if any(p is None for p in parsed) else parsed

    return parse


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(low: float, high: float) -> Parser:
    """``30`` / ``30s`` / ``1.5m`` / ``500ms`` / ``2h`` within [low, high] seconds."""

    def parse(value: Any) -> float | None:
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value) if low <= value <= high else None  # 10**400 has no float
        elif isinstance(value, str):
            match = _DURATION.fullmatch(value.strip())
            if match:
                seconds = float(match.group(1)) * _UNITS[match.group(2)]
        if seconds is None or not math.isfinite(seconds) or not low <= seconds <= high:
            return None
        return seconds

    return parse
