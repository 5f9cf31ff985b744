"""Checks of a terraform/ module without a Terraform binary, shared by the aws, gcp and azure
tests: the module parsed with python-hcl2 (in one shape whatever its version), checkov run over
it, and whether a module's grants cover the permissions the code was seen to need (and no
more)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hcl2
import pytest

TERRAFORM = Path(__file__).resolve().parents[1] / "terraform"


def unquote(value: Any) -> Any:
    """python-hcl2 8 keeps the quotes of labels and strings (``'"clusters"'``), older versions
    and bc-python-hcl2 do not: one shape for the checks."""
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def one(value: Any) -> Any:
    """The value inside single-item lists (python-hcl2 wraps attribute values in them or not)."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def flat(value: Any) -> list[str]:
    """A list of strings from either python-hcl2 shape (values wrapped in lists or not)."""
    if isinstance(value, list):
        return [s for item in value for s in flat(item)]
    return [str(value)]


def flat_blocks(value: Any) -> list[dict[str, Any]]:
    """The blocks of a nested block attribute, as one list of dicts."""
    if isinstance(value, dict):
        return [value]
    return [b for item in value for b in flat_blocks(item)]


def parse_module(module: Path) -> dict[str, Any]:
    """Every ``*.tf`` file of ``module`` parsed, by file name."""
    parsed: dict[str, Any] = {}
    for path in sorted(module.glob("*.tf")):
        with path.open() as handle:
            parsed[path.name] = unquote(hcl2.load(handle))
    return parsed


def resources(module: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every ``resource "KIND" "NAME"`` body of ``module``, by (KIND, NAME)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for parsed in parse_module(module).values():
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    found[(kind, name)] = body
    return found


def resource(module: Path, kind: str, name: str) -> dict[str, Any]:
    """The body of ``resource "KIND" "NAME"``; the test fails when the module has none."""
    body = resources(module).get((kind, name))
    if body is None:
        raise AssertionError(f"no resource {kind}.{name} in {module}")
    return dict(body)


def checkov_report(module: Path) -> dict[str, Any]:
    """checkov's JSON report over ``module`` (the terraform framework, no downloads)."""
    beside = Path(sys.executable).parent / "checkov"  # scripts/setup.sh links it into .venv/bin
    checkov = str(beside) if beside.exists() else shutil.which("checkov")
    if checkov is None:
        pytest.fail(
            "needs checkov (scripts/setup.sh installs it in its own environment, .venv/tools/checkov)"
        )
    done = subprocess.run(
        [checkov, "-d", str(module), "--framework", "terraform", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def assert_checkov_passes(
    module: Path, check_family: str, *, passed_at_least: int
) -> dict[str, Any]:
    """checkov finds no failed check in ``module``, passes at least ``passed_at_least``, and every
    skip (``checkov:skip=CKV_<check_family>_N:reason``) carries a reason; the report returned."""
    report = checkov_report(module)
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert report["summary"]["failed"] == 0, failed
    assert report["summary"]["passed"] >= passed_at_least, report["summary"]
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped["check_id"]
    for path in module.glob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                assert re.search(rf"checkov:skip=CKV2?_{check_family}_\d+:.{{20,}}", line), line
    return report


def covers(grant: str, permission: str) -> bool:
    """Whether ``grant`` (a name, or a pattern with ``*``) covers ``permission``; names are
    compared case-insensitively, as IAM and Azure RBAC do."""
    return fnmatch.fnmatchcase(permission.lower(), grant.lower())


def ungranted(grants: Iterable[str], needed: Iterable[str]) -> set[str]:
    """The permissions in ``needed`` that no grant covers (empty: every call is allowed)."""
    patterns = list(grants)
    return {n for n in needed if not any(covers(g, n) for g in patterns)}


def unused(grants: Iterable[str], needed: Iterable[str]) -> list[str]:
    """The grants that cover nothing in ``needed`` (empty: the module grants no more)."""
    wanted = list(needed)
    return [g for g in grants if not any(covers(g, n) for n in wanted)]
