"""Each file of tests/spec/invalid/ holds one mistake and states, on its first line, where
the one problem must be reported: ``# expect: LINE:COLUMN KEYPATH: MESSAGE-PART``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provision.errors import SpecError
from provision.spec.load import load_spec

INVALID = Path(__file__).resolve().parent / "invalid"

EXPECT = re.compile(r"# expect: (\d+):(\d+) (\S*): (.+)")
CASES = sorted(INVALID.glob("*.yml"))


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_invalid_spec_gives_exactly_one_located_problem(path: Path) -> None:
    match = EXPECT.fullmatch(path.read_bytes().split(b"\n", 1)[0].decode())
    assert match, f"{path.name}: first line must be '# expect: L:C key: message'"
    line, column, key, message = match.groups()
    with pytest.raises(SpecError) as caught:
        load_spec([path])
    problems = caught.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    problem = problems[0]
    assert (problem.file, problem.line, problem.column, problem.key) == (
        str(path),
        int(line),
        int(column),
        key,
    ), str(problem)
    assert message in problem.message
    rendered = str(problem)
    assert "\n" not in rendered
    assert rendered.startswith(f"{path}:{line}:{column}: ")
