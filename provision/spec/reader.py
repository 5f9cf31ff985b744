"""Reading typed values out of a located YAML document, collecting every problem with its
file, line, column and key path. Shared by the files users write besides image specs: cluster
specs (provision/reconcile/spec.py) and a target's own files (the metal lab file)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any

from provision.errors import Problem
from provision.spec.checks import type_name
from provision.spec.source import Mark, YamlList, YamlMap, mark_of

KeyPath = tuple[str | int, ...]


def render_key_path(path: KeyPath) -> str:
    """``("groups", 0, "update")`` -> ``groups[0].update``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def mark_at(root: Any, path: KeyPath, fallback: Mark, *, at_key: bool = False) -> Mark:
    """Where ``path`` is written in the located document ``root`` (its key with ``at_key``),
    else where its nearest written ancestor is."""
    mark = mark_of(root, fallback)
    node = root
    for index, part in enumerate(path):
        if isinstance(node, YamlMap) and isinstance(part, str) and part in node:
            last = index == len(path) - 1
            mark = node.key_mark(part) if last and at_key else node.value_mark(part)
        elif isinstance(node, YamlList) and isinstance(part, int) and 0 <= part < len(node):
            mark = node.item_mark(part)
        else:
            break
        node = node[part]
    return mark


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DocumentReader:
    """Collects problems while reading typed values out of a located document."""

    def __init__(self, root: Any, file: str) -> None:
        self.root = root
        self.file = file
        self.problems: list[Problem] = []

    def fail(self, path: KeyPath, message: str, *, at_key: bool = False) -> None:
        mark = mark_at(self.root, path, Mark(self.file, 0, 0), at_key=at_key)
        self.problems.append(mark.problem(render_key_path(path), message))

    def mapping(
        self, value: Any, path: KeyPath, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, Any]:
        """``value`` as a mapping (None is empty); unknown keys (with a suggestion) and missing
        required keys are problems."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, not {type_name(value)}")
            return {}
        known = sorted(allowed)
        for key in value:
            if str(key) not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                self.fail(
                    (*path, str(key)),
                    "unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""),
                    at_key=True,
                )
        for key in sorted(set(required) - set(value)):
            self.fail(path, f"missing required key {key!r}")
        return {str(k): v for k, v in value.items()}

    def typed(
        self, value: Any, path: KeyPath, parse: Callable[[Any], Any], what: str, default: Any
    ) -> Any:
        """``parse(value)``, or ``default`` (None stays the default; an unparsable value is a problem)."""
        if value is None:
            return default
        result = parse(value)
        if result is None:
            self.fail(path, f"must be {what}, not {shown(value)}")
            return default
        return result

    def text(
        self,
        value: Any,
        path: KeyPath,
        pattern: re.Pattern[str] | None = None,
        what: str = "a string",
        max_len: int = 4096,
    ) -> str:
        """A string of at most ``max_len`` characters matching ``pattern``; "" after a problem."""
        if (
            not isinstance(value, str)
            or len(value) > max_len
            or (pattern is not None and not pattern.fullmatch(value))
        ):
            self.fail(path, f"must be {what}, not {shown(value)}")
            return ""
        return value
