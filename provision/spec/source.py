"""YAML loading that remembers where every key and value came from.

``parse_yaml_text`` composes a document with PyYAML's *safe* loader (no Python tags, no
arbitrary objects) and builds plain Python values whose containers carry their source
positions: a :class:`YamlMap` knows the mark of each key and each value, a :class:`YamlList`
the mark of each item. Scalars are ordinary ``str``/``int``/``float``/``bool``/``None``.

Problems that do not stop loading (duplicate keys, non-string keys, unsupported tags) are
collected and returned with the value; a syntax error stops loading and is returned as the
only problem. Lines and columns are 1-based, as editors show them.

Hostile input is refused quickly and located: a spec is read only from a regular file (a FIFO,
a device or a directory is one problem, found without blocking) or from stdin (``-``), never
more than :data:`MAX_SPEC_BYTES`; nesting deeper than :data:`MAX_DEPTH` stops composing at the
node that is too deep (before Python's recursion limit); unprintable characters and bytes that
are not UTF-8 are reported by line and column.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from provision.errors import Problem

MAX_SPEC_BYTES = 16 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64
STDIN = "-"

_COLLECTION_TAGS: dict[type[Node], str] = {
    MappingNode: "tag:yaml.org,2002:map",
    SequenceNode: "tag:yaml.org,2002:seq",
}

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


class _TooDeep(yaml.YAMLError):
    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels")
        self.mark = mark


class _DepthLimitedLoader(yaml.SafeLoader):
    """The safe loader, refusing (located, before any deep recursion) a node nested deeper
    than :data:`MAX_DEPTH`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


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
            raise _TooBig(_mark(self.file, node), f"more than {MAX_NODES} YAML nodes (alias bomb?)")
        if isinstance(node, ScalarNode):
            return self.build_scalar(node, path)
        if id(node) in self.active:
            self.problems.append(_mark(self.file, node).problem(path, "recursive YAML alias"))
            return None
        if len(self.active) >= MAX_DEPTH:  # aliases can nest what composing did not
            raise _TooBig(_mark(self.file, node), f"nested deeper than {MAX_DEPTH} levels")
        expected = _COLLECTION_TAGS.get(type(node))
        if node.tag != expected:
            self.problems.append(
                _mark(self.file, node).problem(path, f"unsupported YAML tag {node.tag!r}")
            )
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
            self.problems.append(
                _mark(self.file, node).problem(path, f"unsupported YAML tag {node.tag!r}")
            )
            return node.value
        if node.tag in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:timestamp"):
            return node.value
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            reason = (
                f"a number of {len(node.value)} digits is too long"
                if len(node.value) > 1000
                else f"bad scalar: {exc}"
            )
            self.problems.append(_mark(self.file, node).problem(path, reason))
            return None

    def build_map(self, node: MappingNode, path: str) -> YamlMap:
        result = YamlMap(_mark(self.file, node))
        for key_node, value_node in node.value:
            key_mark = _mark(self.file, key_node)
            if isinstance(key_node, ScalarNode) and key_node.tag == "tag:yaml.org,2002:merge":
                self.problems.append(
                    key_mark.problem(path, "YAML merge keys (<<) are not supported")
                )
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag not in (
                "tag:yaml.org,2002:str",
                "tag:yaml.org,2002:int",
                "tag:yaml.org,2002:bool",
                "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:null",
            ):
                self.problems.append(key_mark.problem(path, "mapping keys must be plain strings"))
                continue
            key = key_node.value
            child = f"{path}.{key}" if path else key
            if key in result:
                first = result.key_marks[key]
                self.problems.append(
                    key_mark.problem(child, f"duplicate key (first at line {first.line})")
                )
                continue
            result.key_marks[key] = key_mark
            result.value_marks[key] = _mark(self.file, value_node)
            result[key] = self.build(value_node, child)
        return result


class _TooBig(Exception):
    def __init__(self, mark: Mark, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of character ``index`` of ``text``."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def compose_yaml(text: str, file: str) -> tuple[Node | None, list[Problem]]:
    """The node tree of one YAML document (None when empty), composed with the safe loader
    and :data:`MAX_DEPTH`; or None and the one located problem that stopped it."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        return None, [Problem(file, 1, 1, "", f"larger than {MAX_SPEC_BYTES} bytes")]
    try:
        return yaml.compose(text, Loader=_DepthLimitedLoader), []
    except _TooDeep as exc:
        return None, [Problem(file, exc.mark.line + 1, exc.mark.column + 1, "", str(exc))]
    except yaml.reader.ReaderError as exc:
        line, column = _position(text, exc.position)
        return None, [
            Problem(
                file, line, column, "", f"character U+{exc.character:04X} is not allowed in YAML"
            )
        ]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        reason = "; ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        return None, [Problem(file, line, column, "", f"YAML syntax error: {reason}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 0, 0, "", f"YAML error: {exc}")]


def parse_yaml_text(
    text: str, file: str, *, require_document: bool = False
) -> tuple[Any, list[Problem]]:
    """Parse one YAML document; return its located value (None when empty) and the problems.
    With ``require_document``, an empty text (nothing but blanks and comments) is a problem."""
    node, problems = compose_yaml(text, file)
    if problems:
        return None, problems
    if node is None:
        if require_document:
            return None, [Problem(file, 1, 1, "", "the file is empty (no YAML document)")]
        return None, []
    builder = _Builder(file)
    try:
        value = builder.build(node, "")
    except _TooBig as exc:
        return None, [exc.mark.problem("", exc.message)]
    return value, builder.problems


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "something else"


def _read_bounded(stream: BinaryIO, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of ``stream``; None when it holds more."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    return None


def read_spec_bytes(path: Path) -> tuple[bytes | None, list[Problem]]:
    """The bytes of the spec at ``path`` (``-``: stdin), or None with one problem when it is
    missing, unreadable, not a regular file or larger than :data:`MAX_SPEC_BYTES`. Never
    blocks on a FIFO and never reads an endless device."""
    file = str(path)
    too_big = Problem(file, 0, 0, "", f"larger than {MAX_SPEC_BYTES} bytes")
    if file == STDIN:
        data = _read_bounded(sys.stdin.buffer, MAX_SPEC_BYTES)
        return (data, []) if data is not None else (None, [too_big])
    try:  # O_NONBLOCK: opening a FIFO does not wait for a writer; fstat then refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        return None, [Problem(file, 0, 0, "", f"cannot read: {exc.strerror or exc}")]
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None, [
                Problem(
                    file,
                    0,
                    0,
                    "",
                    f"not a regular file but {_kind(info.st_mode)} (give a file, or - for stdin)",
                )
            ]
        with os.fdopen(fd, "rb") as stream:
            data = _read_bounded(stream, MAX_SPEC_BYTES) if info.st_size <= MAX_SPEC_BYTES else None
    except OSError as exc:
        return None, [Problem(file, 0, 0, "", f"cannot read: {exc.strerror or exc}")]
    return (data, []) if data is not None else (None, [too_big])


def decode_spec_text(data: bytes, file: str) -> tuple[str | None, list[Problem]]:
    """``data`` as UTF-8 text, or None with the line and column of the first bad byte."""
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = (
            len(data[data.rfind(b"\n", 0, exc.start) + 1 : exc.start].decode("utf-8", "replace"))
            + 1
        )
        return None, [
            Problem(file, line, column, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x})")
        ]


def read_text_file(path: Path) -> tuple[str | None, list[Problem]]:
    """The text of ``path`` (``-``: stdin); None with one problem when it is unreadable, not a
    regular file, larger than :data:`MAX_SPEC_BYTES` or not UTF-8."""
    data, problems = read_spec_bytes(path)
    if data is None:
        return None, problems
    return decode_spec_text(data, str(path))


def read_yaml_file(path: Path) -> tuple[Any, list[Problem]]:
    """Read and parse ``path``; an unreadable, empty or non-UTF-8 file is one problem."""
    text, problems = read_text_file(path)
    if text is None:
        return None, problems
    return parse_yaml_text(text, str(path), require_document=True)
