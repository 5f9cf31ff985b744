"""YAML loading that remembers where every key and value came from.

``parse_yaml_text`` composes a document with PyYAML's *safe* loader (no Python tags, no
arbitrary objects) and builds plain Python values whose containers carry their source
positions: a :class:`YamlMap` knows the mark of each key and each value, a :class:`YamlList`
the mark of each item. Scalars are ordinary ``str``/``int``/``float``/``bool``/``None``.

Problems that do not stop loading (duplicate keys, non-string keys, unsupported tags) are
collected and returned with the value; a syntax error stops loading and is returned as the
only problem. Lines and columns are 1-based, as editors show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from provision.errors import Problem

MAX_SPEC_BYTES = 16 * 1024 * 1024
MAX_NODES = 200_000

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
}


@dataclass(frozen=True)
class Mark:
    """A position in a source file (1-based line and column)."""

    file: str
    line: int
    column: int

    def problem(self, key: str, message: str) -> Problem:
        return Problem(self.file, self.line, self.column, key, message)


class YamlMap(dict[str, Any]):
    """A mapping with the source mark of itself, of each key and of each value."""

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.key_marks: dict[str, Mark] = {}
        self.value_marks: dict[str, Mark] = {}

    def key_mark(self, key: str) -> Mark:
        return self.key_marks.get(key, self.mark)

    def value_mark(self, key: str) -> Mark:
        return self.value_marks.get(key, self.mark)


class YamlList(list[Any]):
    """A sequence with the source mark of itself and of each item."""

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.item_marks: list[Mark] = []

    def item_mark(self, index: int) -> Mark:
        return self.item_marks[index] if index < len(self.item_marks) else self.mark


def mark_of(value: Any, fallback: Mark) -> Mark:
    """The mark a container carries, else ``fallback``."""
    mark = getattr(value, "mark", None)
    return mark if isinstance(mark, Mark) else fallback


def _mark(file: str, node: Node) -> Mark:
    start = node.start_mark
    return Mark(file, start.line + 1, start.column + 1)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.nodes = 0
        self.active: set[int] = set()
        self.constructor = yaml.SafeLoader("")

    def build(self, node: Node, path: str) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig(_mark(self.file, node))
        if isinstance(node, ScalarNode):
            return self.build_scalar(node, path)
        if id(node) in self.active:
            self.problems.append(_mark(self.file, node).problem(path, "recursive YAML alias"))
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self.build_map(node, path)
            result = YamlList(_mark(self.file, node))
            for index, item in enumerate(node.value):
                result.item_marks.append(_mark(self.file, item))
                result.append(self.build(item, f"{path}[{index}]"))
            return result
        finally:
            self.active.discard(id(node))

    def build_scalar(self, node: ScalarNode, path: str) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self.problems.append(_mark(self.file, node).problem(
                path, f"unsupported YAML tag {node.tag!r}"))
            return node.value
        if node.tag in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:timestamp"):
            return node.value
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            self.problems.append(_mark(self.file, node).problem(path, f"bad scalar: {exc}"))
            return None

    def build_map(self, node: MappingNode, path: str) -> YamlMap:
        result = YamlMap(_mark(self.file, node))
        for key_node, value_node in node.value:
            key_mark = _mark(self.file, key_node)
            if isinstance(key_node, ScalarNode) and key_node.tag == "tag:yaml.org,2002:merge":
                self.problems.append(key_mark.problem(path, "YAML merge keys (<<) are not supported"))
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag not in (
                    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:bool",
                    "tag:yaml.org,2002:float", "tag:yaml.org,2002:null"):
                self.problems.append(key_mark.problem(path, "mapping keys must be plain strings"))
                continue
            key = key_node.value
            child = f"{path}.{key}" if path else key
            if key in result:
                first = result.key_marks[key]
                self.problems.append(key_mark.problem(
                    child, f"duplicate key (first at line {first.line})"))
                continue
            result.key_marks[key] = key_mark
            result.value_marks[key] = _mark(self.file, value_node)
            result[key] = self.build(value_node, child)
        return result


class _TooBig(Exception):
    def __init__(self, mark: Mark) -> None:
        super().__init__("too many nodes")
        self.mark = mark


def parse_yaml_text(text: str, file: str) -> tuple[Any, list[Problem]]:
    """Parse one YAML document; return its located value (None when empty) and the problems."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        return None, [Problem(file, 0, 0, "", f"larger than {MAX_SPEC_BYTES} bytes")]
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        reason = "; ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        return None, [Problem(file, line, column, "", f"YAML syntax error: {reason}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 0, 0, "", f"YAML error: {exc}")]
    if node is None:
        return None, []
    builder = _Builder(file)
    try:
        value = builder.build(node, "")
    except _TooBig as exc:
        return None, [exc.mark.problem("", f"more than {MAX_NODES} YAML nodes (alias bomb?)")]
    except RecursionError:
        return None, [Problem(file, 0, 0, "", "YAML nested too deeply")]
    return value, builder.problems


def read_text_file(path: Path) -> tuple[str | None, list[Problem]]:
    """The text of ``path`` (None with one problem when it is unreadable, larger than
    :data:`MAX_SPEC_BYTES` or not UTF-8)."""
    file = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            return None, [Problem(file, 0, 0, "", f"larger than {MAX_SPEC_BYTES} bytes")]
        data = path.read_bytes()
    except OSError as exc:
        return None, [Problem(file, 0, 0, "", f"cannot read: {exc.strerror or exc}")]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        return None, [Problem(file, 0, 0, "", f"not UTF-8 text (byte {exc.start})")]


def read_yaml_file(path: Path) -> tuple[Any, list[Problem]]:
    """Read and parse ``path``; an unreadable or non-UTF-8 file is one problem."""
    text, problems = read_text_file(path)
    if text is None:
        return None, problems
    return parse_yaml_text(text, str(path))
