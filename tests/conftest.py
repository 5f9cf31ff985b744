"""A skip is a silent pass, so under CI (``CI`` set to anything but empty, 0, false or no, as
scripts/test.sh and every CI service do) a skipped test fails the run: ``pytest.skip``,
``skipif`` and ``skip`` marks, ``pytest.importorskip`` (a module skipped at collection is a
collection error) and non-strict ``xfail`` (an expected failure and an unexpected pass alike).
A missing prerequisite is a failure with a message that names what to install
(``pytest.fail``, as tests/boot/conftest.py does), not a skip.

The only exceptions are the tests on ALLOWED_SKIPS below, each with the reason it may skip.
This file needs nothing but pytest: tests/test_skip_policy.py runs a copy of it."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

# Node id (as pytest prints it, without a parametrize suffix: it covers every parameter) ->
# why that test may skip in CI. Keep it short; every entry needs its reason.
ALLOWED_SKIPS: dict[str, str] = {}

FALSE_WORDS = ("", "0", "false", "no")


def skips_fail() -> bool:
    """Whether this run is CI, where a skip outside ALLOWED_SKIPS fails."""
    return os.environ.get("CI", "").strip().lower() not in FALSE_WORDS


def allowed_reason(nodeid: str) -> str | None:
    """The allow-list's reason for ``nodeid`` (or for its unparametrized id), else None."""
    return ALLOWED_SKIPS.get(nodeid) or ALLOWED_SKIPS.get(nodeid.split("[", 1)[0])


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason and place pytest gives for a skip: a (path, line, reason) tuple or text."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, line, reason = longrepr
        return f"{str(reason).removeprefix('Skipped: ')} ({path}:{line})"
    return str(longrepr)


def policy_message(what: str) -> str:
    return (
        f"{what}; under CI a skip fails the run: install what it needs (scripts/setup.sh), "
        "make it pytest.fail, or put it on ALLOWED_SKIPS in tests/conftest.py with the reason"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not skips_fail() or allowed_reason(report.nodeid) is not None:
        return report
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:  # a non-strict xfail: expected failure (skipped) or XPASS (passed)
        kind = "expected failure (xfail)" if report.skipped else "unexpected pass of an xfail test"
        report.outcome = "failed"
        report.longrepr = policy_message(f"{kind}: {wasxfail or 'no reason given'}")
        del report.wasxfail
    elif report.skipped:
        report.outcome = "failed"
        report.longrepr = policy_message(f"skipped: {skip_reason(report)}")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.skipped and skips_fail() and allowed_reason(report.nodeid) is None:
        report.outcome = "failed"
        report.longrepr = policy_message(f"skipped at collection: {skip_reason(report)}")
    return report
