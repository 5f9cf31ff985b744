"""The cluster spec is read by the shared located YAML loader: its YAML-level problems are
located like its schema problems, and the text the digest covers is the file's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.errors import SpecError
from provision.reconcile.spec import load_cluster_spec, parse_cluster_spec
from provision.spec.reader import mark_at
from provision.spec.source import Mark, parse_yaml_text

GOOD = (
    "cluster: demo\ngroups:\n  - name: web\n    provider: simulated\n    image: img\n    size: 2\n"
)


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_cluster_spec(text, "c.yml")
    return [str(p) for p in info.value.problems]


def test_yaml_problems_are_located() -> None:
    assert problems(GOOD + "cluster: again\n") == [
        "c.yml:7:1: cluster: duplicate key (first at line 1)"
    ]
    assert problems("cluster: demo\ngroups: [\n")[0].startswith("c.yml:3:1: YAML syntax error")
    assert problems(GOOD + "daemon: !!python/name:os.system x\n") == [
        "c.yml:7:9: daemon: unsupported YAML tag 'tag:yaml.org,2002:python/name:os.system'"
    ]


def test_schema_problems_point_at_keys_values_and_nearest_ancestors() -> None:
    found = problems(
        "cluster: demo\ngroups:\n  - name: web\n    provider: sim\n    image: img\n    sizee: 2\n"
    )
    assert "c.yml:6:5: groups[0].sizee: unknown key (did you mean 'size'?)" in found
    assert "c.yml:3:5: groups[0]: missing 'size' (or 'members')" in found
    assert problems("") == ["c.yml:1:1: the file is empty (no YAML document)"]
    assert problems("[]\n") == ["c.yml:1:1: a cluster spec must be a mapping, not a list"]


def test_mark_at_walks_maps_and_lists() -> None:
    root, found = parse_yaml_text("a:\n  - x\n  - {b: 1}\n", "f")
    assert not found
    fallback = Mark("f", 0, 0)
    assert mark_at(root, ("a", 1, "b"), fallback) == Mark("f", 3, 9)
    assert mark_at(root, ("a", 1, "b"), fallback, at_key=True) == Mark("f", 3, 6)
    assert mark_at(root, ("a", 5, "c"), fallback) == Mark("f", 2, 3)
    assert mark_at(None, ("a",), fallback) == fallback


def test_load_reads_the_file_and_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yml"
    good = GOOD
    path.write_text(good)
    spec = load_cluster_spec(path)
    assert spec.source_text == good and spec.source_file == str(path)
    path.write_bytes(good.encode() + b"# \xff\n")
    with pytest.raises(SpecError, match="cluster.yml:7:3: not UTF-8"):
        load_cluster_spec(path)
    with pytest.raises(SpecError, match="cannot read"):
        load_cluster_spec(tmp_path / "missing.yml")
