"""Specs that are not files, or files made to hurt: each image and cluster spec loader refuses
them with one located problem within a second (FIFOs used to hang, /dev/zero to read until
MemoryError, deep nesting to end in a RecursionError traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provision.errors import Problem, SpecError
from provision.reconcile.spec import load_cluster_spec
from provision.spec.load import load_spec
from provision.spec.source import MAX_DEPTH, MAX_SPEC_BYTES

ROOT = Path(__file__).resolve().parents[2]
LOADERS: dict[str, Callable[[Path], Any]] = {
    "image": lambda path: load_spec([path]),
    "cluster": load_cluster_spec,
}


def hostile(tmp_path: Path, kind: str) -> Path:
    if kind == "fifo":
        path = tmp_path / "spec.yml"
        os.mkfifo(path)
        return path
    if kind == "directory":
        return tmp_path
    if kind == "huge":  # sparse: its size alone refuses it, nothing is read
        path = tmp_path / "huge.yml"
        with open(path, "wb") as handle:
            handle.truncate(MAX_SPEC_BYTES + 1)
        return path
    if kind == "deep":  # about 1 KB, 500 levels
        path = tmp_path / "deep.yml"
        path.write_text("a: " + "[" * 500 + "]" * 500 + "\n")
        return path
    return Path(kind)


def only_problem(load: Callable[[Path], Any], path: Path) -> Problem:
    started, cpu = time.monotonic(), time.process_time()
    with pytest.raises(SpecError) as caught:
        load(path)
    # Within a second of work (CPU time: other processes on a loaded machine do not count), and
    # no waiting on a FIFO or a device (wall time, with room for a loaded machine).
    assert time.process_time() - cpu < 1.0
    assert time.monotonic() - started < 10.0
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert "\n" not in str(problems[0])
    return problems[0]


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("fifo", "not a regular file but a FIFO"),
        ("/dev/zero", "not a regular file but a device"),
        ("/dev/null", "not a regular file but a device"),
        ("directory", "not a regular file but a directory"),
        ("huge", f"larger than {MAX_SPEC_BYTES} bytes"),
        ("/nonexistent/spec.yml", "cannot read: No such file or directory"),
    ],
)
def test_what_is_not_a_regular_spec_file_is_refused_at_once(
    tmp_path: Path, loader: str, kind: str, message: str
) -> None:
    path = hostile(tmp_path, kind)
    problem = only_problem(LOADERS[loader], path)
    assert problem.file == str(path) and message in problem.message


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_deep_nesting_is_located_where_it_gets_too_deep(tmp_path: Path, loader: str) -> None:
    path = hostile(tmp_path, "deep")
    problem = only_problem(LOADERS[loader], path)
    assert (problem.line, problem.column) == (1, 3 + MAX_DEPTH)  # the first bracket too deep
    assert problem.message == f"nested deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_nul_and_non_utf8_bytes_are_located_by_line_and_column(tmp_path: Path, loader: str) -> None:
    path = tmp_path / "spec.yml"
    path.write_bytes(b"cluster: demo\nservices:\n  - name: a\x00b\n")
    problem = only_problem(LOADERS[loader], path)
    assert (problem.line, problem.column) == (3, 12) and "U+0000" in problem.message
    path.write_bytes(b"cluster: demo\n# caf\xe9\n")
    problem = only_problem(LOADERS[loader], path)
    assert (problem.line, problem.column) == (
        2,
        6,
    ) and "not UTF-8 text (byte 0xe9)" in problem.message


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_an_empty_file_is_not_a_spec(tmp_path: Path, loader: str) -> None:
    path = tmp_path / "spec.yml"
    for text in ("", "\n\n", "# only a comment\n"):
        path.write_text(text)
        problem = only_problem(LOADERS[loader], path)
        assert (problem.line, problem.column, problem.message) == (
            1,
            1,
            "the file is empty (no YAML document)",
        )


def test_a_python_tag_on_a_collection_is_an_unsupported_tag(tmp_path: Path) -> None:
    path = tmp_path / "spec.yml"
    path.write_text("services:\n  - !!python/object/apply:os.system [ls]\n")
    with pytest.raises(SpecError) as caught:
        load_spec([path])
    assert (
        f"{path}:2:5: services[0]: unsupported YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'"
        in [str(p) for p in caught.value.problems]
    )
    cluster = tmp_path / "cluster.yml"
    cluster.write_text("cluster: demo\ngroups: !!python/object/apply:os.system [ls]\n")
    problem = only_problem(load_cluster_spec, cluster)
    assert (problem.line, problem.column, problem.key) == (2, 9, "groups")
    assert problem.message.startswith("unsupported YAML tag")


def test_aliases_cannot_nest_deeper_than_composing_allows(tmp_path: Path) -> None:
    rows = ["a0: &a0 " + "[" * 60 + "]" * 60]
    rows += [f"a{i}: &a{i} " + "[" * 60 + f"*a{i - 1}" + "]" * 60 for i in range(1, 5)]
    path = tmp_path / "spec.yml"
    path.write_text("\n".join(rows) + "\n")
    problem = only_problem(load_cluster_spec, path)
    assert problem.message == f"nested deeper than {MAX_DEPTH} levels" and problem.line > 0


def provision(*argv: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "provision", *argv],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=ROOT / "examples" / "linuxkit",
        timeout=60,
        check=False,
    )


def test_stdin_is_read_bounded() -> None:  # relative paths in it resolve from the working directory
    spec = (ROOT / "examples" / "linuxkit" / "base.yml").read_bytes()
    done = provision("validate", "-", stdin=spec)
    assert done.returncode == 0 and done.stdout.startswith(b"ok: -"), done.stderr
    done = provision("validate", "-", stdin=b"# x\n" * (MAX_SPEC_BYTES // 4 + 1))
    assert done.returncode == 2
    assert (
        done.stderr.decode().splitlines()[0]
        == f"provision: error: -: larger than {MAX_SPEC_BYTES} bytes"
    )
