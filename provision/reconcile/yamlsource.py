"""Strict YAML with positions: every value's ``file:line:column`` by key path, duplicate keys refused.

(Written here because no shared ``provision/yamlsource.py`` existed when the reconcile engine
needed one; switch to it once it lands.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from provision.errors import Problem, SpecError

Path = tuple[str | int, ...]


@dataclass
class YamlSource:
    """A parsed document and where each key path sits in the file."""

    file: str
    value: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def problem(self, path: Path, message: str, *, at_key: bool = False) -> Problem:
        """A located problem at the value (or its key); falls back to the nearest ancestor."""
        if at_key and path in self.key_positions:
            line, column = self.key_positions[path]
            return Problem(self.file, line, column, render_path(path), message)
        probe = path
        while probe not in self.positions and probe:
            probe = probe[:-1]
        line, column = self.positions.get(probe, (0, 0))
        return Problem(self.file, line, column, render_path(path), message)


def render_path(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def parse_yaml_source(text: str, file: str) -> YamlSource:
    """Parse ``text``; raise SpecError (located) on syntax errors or duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise SpecError([Problem(file, line, column, "", f"YAML: {exc.problem}")]) from exc
    except yaml.YAMLError as exc:
        raise SpecError([Problem(file, 0, 0, "", f"YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    source = YamlSource(file, value)
    problems: list[Problem] = []
    if node is not None:
        _walk(node, (), source, problems)
    if problems:
        raise SpecError(problems)
    return source


def _walk(node: yaml.Node, path: Path, source: YamlSource, problems: list[Problem]) -> None:
    source.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            if key in seen:
                problems.append(
                    Problem(
                        source.file,
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                        render_path(child),
                        "duplicate key",
                    )
                )
            seen.add(key)
            source.key_positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _walk(value_node, child, source, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), source, problems)
