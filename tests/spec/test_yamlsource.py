"""Located YAML: marks of keys, values and items; what the safe loader refuses."""

from __future__ import annotations

import time

from provision.spec.source import Mark, YamlList, YamlMap, parse_yaml_text


def test_marks_of_keys_values_and_items() -> None:
    value, problems = parse_yaml_text("a: 1\nb:\n  - x\n  - {c: d}\n", "f.yml")
    assert problems == []
    assert isinstance(value, YamlMap) and value == {"a": 1, "b": ["x", {"c": "d"}]}
    assert value.key_mark("b") == Mark("f.yml", 2, 1)
    assert value.value_mark("a") == Mark("f.yml", 1, 4)
    items = value["b"]
    assert isinstance(items, YamlList) and items.item_mark(1) == Mark("f.yml", 4, 5)
    assert items[1].value_mark("c") == Mark("f.yml", 4, 9)


def test_every_duplicate_key_is_reported() -> None:
    value, problems = parse_yaml_text("a: 1\nb: 2\na: 3\nb: 4\n", "f.yml")
    assert value == {"a": 1, "b": 2}
    assert [str(p) for p in problems] == [
        "f.yml:3:1: a: duplicate key (first at line 1)",
        "f.yml:4:1: b: duplicate key (first at line 2)",
    ]


def test_python_tags_and_merge_keys_are_refused() -> None:
    _, problems = parse_yaml_text("a: !!python/name:os.system x\n", "f.yml")
    assert "unsupported YAML tag" in problems[0].message
    _, problems = parse_yaml_text("base: &b {x: 1}\nc:\n  <<: *b\n", "f.yml")
    assert [p.message for p in problems] == ["YAML merge keys (<<) are not supported"]


def test_timestamps_stay_strings_and_scalars_keep_yaml_types() -> None:
    value, _ = parse_yaml_text("d: 2024-01-01\nn: 12\nb: true\nz: null\nf: 1.5\n", "f.yml")
    assert value == {"d": "2024-01-01", "n": 12, "b": True, "z": None, "f": 1.5}


def test_alias_bombs_and_cycles_stop_quickly() -> None:
    rows = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        rows.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    start = time.monotonic()
    value, problems = parse_yaml_text("\n".join(rows) + "\n", "bomb.yml")
    assert value is None and "alias bomb" in problems[0].message
    assert time.monotonic() - start < 5
    _, problems = parse_yaml_text("a: &a [*a]\n", "f.yml")
    assert problems[0].message == "recursive YAML alias"


def test_syntax_errors_and_several_documents() -> None:
    value, problems = parse_yaml_text("a: [1\n", "f.yml")
    assert value is None and problems[0].line == 2 and "YAML syntax error" in problems[0].message
    _, problems = parse_yaml_text("a: 1\n---\nb: 2\n", "f.yml")
    assert "expected a single document" in problems[0].message


def test_empty_document() -> None:
    assert parse_yaml_text("# nothing\n", "f.yml") == (None, [])
