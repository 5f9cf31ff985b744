"""Every value of the example specs, replaced in turn by hostile values (or removed): loading
gives a spec or a SpecError, never another exception (an OverflowError from a 400-digit
duration, a TypeError from a list where a string was expected...). Cluster specs and the metal
lab file get every hostile value at every key; the image spec, larger, one at each key,
rotating through them."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from provision.errors import ProvisionError
from provision.providers.metal.lab import parse_lab
from provision.reconcile.spec import parse_cluster_spec
from provision.spec.load import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REMOVE = object()
HOSTILE: list[Any] = [
    REMOVE,
    None,
    True,
    -1,
    0,
    10**30,
    10**400,
    1e308,
    float("inf"),
    float("nan"),
    -0.5,
    1.5,
    "",
    " ",
    "x" * 5000,
    "\x01",
    "☃\u202e",
    "../../etc",
    "/dev/zero",
    "100%",
    "-5%",
    "150%",
    "1e999s",
    "99999999h",
    "0x10",
    ":",
    "a:b:c",
    [],
    [None],
    [1, [2, [3]]],
    [{}],
    {},
    {"a": {"b": None}},
    {"": 1},
]


def key_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from key_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from key_paths(child, (*prefix, index))


def mutations(document: Any, per_path: int = len(HOSTILE)) -> Iterator[tuple[str, str]]:
    """(what was changed, the YAML text) for every key path and ``per_path`` hostile values
    (all of them by default; fewer rotate through the list, so that each is used)."""
    for number, path in enumerate(key_paths(document)):
        for turn in range(per_path):
            value = HOSTILE[(number * per_path + turn) % len(HOSTILE)]
            changed = copy.deepcopy(document)
            parent = changed
            for part in path[:-1]:
                parent = parent[part]
            if value is REMOVE:
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(value)
            shown = "removed" if value is REMOVE else repr(value)[:30]
            yield (
                f"{'.'.join(map(str, path))} = {shown}",
                yaml.safe_dump(changed, allow_unicode=True),
            )


@pytest.mark.parametrize(
    "example", ["cluster-simulated.yml", "local-cluster.yml", "metal-cluster.yml"]
)
def test_cluster_spec_mutations_give_a_spec_or_a_spec_error(example: str) -> None:
    document = yaml.safe_load((EXAMPLES / example).read_text())
    crashes = []
    for what, text in mutations(document):
        try:
            parse_cluster_spec(text, str(EXAMPLES / example))
        except ProvisionError:
            pass
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            crashes.append(f"{what}: {type(exc).__name__}: {exc}"[:200])
    assert not crashes, "\n".join(crashes[:20])


def test_image_spec_mutations_give_a_spec_or_a_spec_error(tmp_path: Path) -> None:
    document = yaml.safe_load((EXAMPLES / "linuxkit" / "full.yml").read_text())
    spec = tmp_path / "spec.yml"
    crashes = []
    for what, text in mutations(document, per_path=1):  # 278 keys; a load takes tens of ms
        spec.write_text(text)
        try:
            load_spec([spec])
        except ProvisionError:
            pass
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            crashes.append(f"{what}: {type(exc).__name__}: {exc}"[:200])
    assert not crashes, "\n".join(crashes[:20])


def test_lab_file_mutations_give_a_lab_or_a_spec_error() -> None:
    document = yaml.safe_load((EXAMPLES / "metal-lab.yml").read_text())
    crashes = []
    for what, text in mutations(document):
        try:
            parse_lab(text, str(EXAMPLES / "metal-lab.yml"))
        except ProvisionError:
            pass
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            crashes.append(f"{what}: {type(exc).__name__}: {exc}"[:200])
    assert not crashes, "\n".join(crashes[:20])
