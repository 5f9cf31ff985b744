"""Each file of tests/reconcile/invalid/ is a cluster spec with one mistake; its first line
states where the one problem must be reported: ``# expect: LINE:COLUMN KEYPATH: MESSAGE-PART``
(as tests/spec/invalid/ does for image specs). Each is refused within a second, by the loader
and by ``provision plan`` (exit 2, one located line)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from provision.cli import main
from provision.errors import SpecError
from provision.reconcile.spec import load_cluster_spec

INVALID = Path(__file__).resolve().parent / "invalid"

EXPECT = re.compile(r"# expect: (\d+):(\d+) (\S*): (.+)")
CASES = sorted(INVALID.glob("*.yml"))


def expectation(path: Path) -> tuple[int, int, str, str]:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    match = EXPECT.fullmatch(first)
    assert match, f"{path.name}: first line must be '# expect: L:C key: message'"
    line, column, key, message = match.groups()
    return int(line), int(column), key, message


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_invalid_cluster_spec_gives_exactly_one_located_problem(path: Path) -> None:
    line, column, key, message = expectation(path)
    started = time.monotonic()
    with pytest.raises(SpecError) as caught:
        load_cluster_spec(path)
    assert time.monotonic() - started < 1.0
    problems = caught.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    problem = problems[0]
    assert (problem.file, problem.line, problem.column, problem.key) == (
        str(path),
        line,
        column,
        key,
    ), str(problem)
    assert message in problem.message
    assert "\n" not in str(problem)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_plan_refuses_it_with_exit_2_and_one_located_line(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line, column, key, message = expectation(path)
    started = time.monotonic()
    assert main(["plan", str(path)]) == 2
    assert time.monotonic() - started < 1.0
    out, err = capsys.readouterr()
    assert out == ""
    lines = [text for text in err.splitlines() if not text.startswith("hint: ")]
    where = f"{path}:{line}:{column}: " + (f"{key}: " if key else "")
    assert len(lines) == 1 and lines[0].startswith(f"provision: error: {where}"), err
    assert message in lines[0]
