"""The repository layout DESIGN.md promises: builders/ and providers/ are reached only through
the provision package, by committed relative symlinks, and nothing imports the bare names."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import provision.builders
import provision.providers

ROOT = Path(__file__).resolve().parent.parent


def test_builders_and_providers_are_relative_symlinks() -> None:
    for name in ("builders", "providers"):
        link = ROOT / "provision" / name
        assert link.is_symlink(), f"provision/{name} must be a symlink"
        assert os.readlink(link) == f"../{name}"
        assert link.resolve() == (ROOT / name).resolve()


def test_packages_import_through_provision() -> None:
    assert Path(provision.builders.__file__).resolve().parent == (ROOT / "builders").resolve()
    assert Path(provision.providers.__file__).resolve().parent == (ROOT / "providers").resolve()


def test_no_bare_imports_of_builders_or_providers() -> None:
    offenders = []
    for folder in ("provision", "builders", "providers", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "provision" / "builders") or path.is_relative_to(
                ROOT / "provision" / "providers"
            ):
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    if name.split(".")[0] in ("builders", "providers"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == []
