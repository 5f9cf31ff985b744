"""The repository layout docs/architecture.md describes: builders/ and providers/ are reached only through
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


# -- the targets seam: nothing outside providers/NAME/ names a target ---------------------------

TARGETS = ("qemu", "simulated", "simulated-http", "aws", "gcp", "azure", "metal")
# `provision run qemu` and `provision serve` are the qemu and metal targets' own commands.
OWN_COMMANDS = {"provision/commands/run.py", "provision/commands/serve.py"}


def _core_modules() -> list[Path]:
    """The engine, the pipeline, the commands and the builders (not the targets themselves)."""
    found = [
        p
        for p in (ROOT / "provision").rglob("*.py")
        if not p.is_relative_to(ROOT / "provision" / "builders")
        and not p.is_relative_to(ROOT / "provision" / "providers")
    ]
    return sorted(found + list((ROOT / "builders").rglob("*.py")))


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
        ):
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_no_core_module_imports_or_names_a_target() -> None:
    from provision.builders.formats import FORMATS
    from provision.providers import target_names

    assert set(target_names()) <= set(TARGETS), "add the new target's name to TARGETS"
    formats = set(FORMATS)  # the gcp and aws *formats* are builders' own names
    offenders = []
    for path in _core_modules():
        relative = str(path.relative_to(ROOT))
        if relative in OWN_COMMANDS:
            continue
        tree = ast.parse(path.read_text(), filename=relative)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            for module in modules:
                parts = module.split(".")
                if parts[:2] == ["provision", "providers"] and len(parts) > 2:
                    offenders.append(f"{relative}:{node.lineno}: imports {module}")
            is_text = (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
            )
            if is_text and node.value in TARGETS and node.value not in formats:  # type: ignore[attr-defined]
                offenders.append(f"{relative}:{node.lineno}: names the target {node.value!r}")  # type: ignore[attr-defined]
    assert offenders == [], (
        "core modules reach targets only through provision.providers:\n" + "\n".join(offenders)
    )


def test_the_check_above_would_catch_a_target_named_in_the_engine(tmp_path: Path) -> None:
    sample = 'def pick(kind: str) -> bool:\n    """qemu is fine in a docstring."""\n    return kind == \'qemu\'\n'
    tree = ast.parse(sample)
    docs = _docstrings(tree)
    named = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docs]
    assert named == ["qemu"]


def test_every_registered_target_satisfies_the_protocol() -> None:
    from provision.providers import get_target, target_names
    from provision.target import Target

    for name in target_names():
        target = get_target(name)
        assert isinstance(target, Target) and target.name == name
        assert target.formats, f"{name} boots no format"
        from provision.builders.formats import parse_format

        for fmt in target.formats:
            parse_format(fmt)
