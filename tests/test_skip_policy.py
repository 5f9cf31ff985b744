"""The skip policy of tests/conftest.py, run for real: pytest in a subprocess on a tiny test
directory that holds a copy of tests/conftest.py. Under CI=true every kind of skip fails the run
unless the test is on ALLOWED_SKIPS; without CI a skip stays a skip."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

CONFTEST = Path(__file__).with_name("conftest.py")

TINY = """
import sys

import pytest


def test_calls_skip():
    pytest.skip("no widget here")


@pytest.mark.skipif(sys.platform != "nonesuch", reason="needs nonesuch")
def test_skipif():
    pass


@pytest.mark.skip(reason="later")
def test_skip_mark():
    pass


@pytest.fixture
def gadget():
    pytest.skip("no gadget (apt-get install gadget)")


def test_fixture_skips(gadget):
    pass


@pytest.mark.xfail(reason="known bug")
def test_xfail_fails():
    assert False


@pytest.mark.xfail(reason="fixed bug")
def test_xfail_passes():
    pass


@pytest.mark.parametrize("n", [1, 2])
def test_allowed(n):
    pytest.skip("only with KVM")


def test_passes():
    pass
"""

ALLOWED_ONLY = """
import pytest


@pytest.mark.parametrize("n", [1, 2])
def test_allowed(n):
    pytest.skip("only with KVM")


def test_passes():
    pass
"""

IMPORTORSKIP = """
import pytest

pytest.importorskip("no_such_module_for_the_skip_policy_test")


def test_never_collected():
    pass
"""


def run_pytest(
    directory: Path,
    *,
    ci: str | None,
    allow: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[int, str, dict[str, str]]:
    """Run pytest on ``directory`` with CI=``ci`` (unset if None): exit code, output, and each
    test's outcome from the JUnit report (passed, failed, error, skipped, xfailed)."""
    conftest = CONFTEST.read_text()
    if allow:
        conftest += f"\nALLOWED_SKIPS.update({allow!r})\n"
    (directory / "conftest.py").write_text(conftest)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci is not None:
        env["CI"] = ci
    junit = directory / "report.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={junit}",
                           *extra, str(directory)],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    outcomes: dict[str, str] = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = child.tag.replace("failure", "failed")
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
        outcomes[case.get("name", "")] = outcome
    return done.returncode, done.stdout + done.stderr, outcomes


def test_every_kind_of_skip_fails_under_ci(tmp_path: Path) -> None:
    (tmp_path / "test_tiny.py").write_text(TINY)
    code, output, outcomes = run_pytest(tmp_path, ci="true")
    assert code == 1, output
    assert outcomes["test_calls_skip"] == "failed", output
    for setup_skip in ("test_skipif", "test_skip_mark", "test_fixture_skips"):
        assert outcomes[setup_skip] == "error", output  # it fails in setup, an error
    assert outcomes["test_xfail_fails"] == "failed", output
    assert outcomes["test_xfail_passes"] == "failed", output
    assert outcomes["test_allowed[1]"] == "failed", output
    assert outcomes["test_passes"] == "passed", output
    assert "skipped: no gadget (apt-get install gadget)" in output
    assert "skipped: needs nonesuch" in output
    assert "expected failure (xfail): known bug" in output
    assert "or put it on ALLOWED_SKIPS in tests/conftest.py with the reason" in output


def test_the_allow_list_lets_a_test_skip_under_ci(tmp_path: Path) -> None:
    (tmp_path / "test_tiny.py").write_text(TINY)
    allow = {"test_tiny.py::test_allowed": "KVM only", "test_tiny.py::test_xfail_fails": "known"}
    code, output, outcomes = run_pytest(tmp_path, ci="1", allow=allow)
    assert code == 1, output  # the others still fail
    assert outcomes["test_allowed[1]"] == outcomes["test_allowed[2]"] == "skipped", output
    assert outcomes["test_xfail_fails"] == "xfailed", output
    assert outcomes["test_calls_skip"] == "failed", output
    (tmp_path / "test_tiny.py").write_text(ALLOWED_ONLY)
    code, output, outcomes = run_pytest(
        tmp_path, ci="true", allow={"test_tiny.py::test_allowed[2]": "KVM only"}
    )
    assert code == 1, output  # an entry with a parameter covers only that parameter
    assert outcomes["test_allowed[1]"] == "failed", output
    assert outcomes["test_allowed[2]"] == "skipped", output
    code, output, outcomes = run_pytest(tmp_path, ci="true", allow=allow)
    assert code == 0, output
    assert outcomes == {
        "test_allowed[1]": "skipped",
        "test_allowed[2]": "skipped",
        "test_passes": "passed",
    }, output


def test_without_ci_a_skip_is_a_skip(tmp_path: Path) -> None:
    (tmp_path / "test_tiny.py").write_text(TINY)
    for ci in (None, "false", "0", ""):
        code, output, outcomes = run_pytest(tmp_path, ci=ci)
        assert code == 0, output
        assert outcomes["test_calls_skip"] == outcomes["test_skipif"] == "skipped", output
        assert outcomes["test_xfail_fails"] == "xfailed", output


def test_importorskip_at_collection_fails_under_ci(tmp_path: Path) -> None:
    (tmp_path / "test_needs_module.py").write_text(IMPORTORSKIP)
    code, output, _ = run_pytest(tmp_path, ci="true")
    assert code != 0, output
    assert (
        "skipped at collection: could not import 'no_such_module_for_the_skip_policy_test'"
        in output
    )
    code, output, _ = run_pytest(
        tmp_path, ci="true", allow={"test_needs_module.py": "optional module"}
    )
    assert code == 5, output  # nothing collected, nothing failed


def test_a_skip_fails_under_ci_through_xdist_too(tmp_path: Path) -> None:
    """scripts/test.sh runs pytest -n 2: the failed report must survive the trip from a worker."""
    (tmp_path / "test_tiny.py").write_text(TINY)
    code, output, outcomes = run_pytest(tmp_path, ci="true", extra=("-n", "1"))
    assert code == 1, output
    assert outcomes["test_calls_skip"] == "failed", output
    assert outcomes["test_skipif"] == "error", output


def test_every_allow_list_entry_names_a_test_file_and_a_reason() -> None:
    spec = importlib.util.spec_from_file_location("skip_policy_conftest", CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for nodeid, reason in module.ALLOWED_SKIPS.items():
        assert (CONFTEST.parent.parent / nodeid.split("::", 1)[0]).is_file(), (
            f"{nodeid}: no such test file"
        )
        assert reason.strip(), f"{nodeid}: give the reason it may skip"
