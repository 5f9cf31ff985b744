"""The command runner: every command is logged at debug level (``provision -v`` shows what
ran), failures carry a copy-pasteable command line, and the tool-to-package table lists exactly
the programs the code runs.

The programs are derived from the source, not listed here: every ``run(...)`` call's program
(the first string of its argv, followed through local variables, parameters and their call
sites, helper functions, dataclass field defaults and imported constants) and every program a
``require_tools`` call, a format writer's ``tools()`` or a target's ``tools`` declares. A call
whose program cannot be derived fails the test, unless it is on the short, commented list
below."""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provision.errors import CommandError, ToolMissingError
from provision.runner import TOOL_PACKAGES, require_tools, run

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("provision", "builders", "providers")
# (module, function) of run() calls whose program is not provision's to choose.
DYNAMIC_PROGRAMS = {
    # docker-credential-NAME, where NAME comes from the user's docker config.json
    ("provision/oci/auth.py", "_from_helper"),
}


@dataclass
class Module:
    rel: str
    tree: ast.Module
    parents: dict[ast.AST, ast.AST] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node

    def function(self, node: ast.AST) -> ast.FunctionDef | None:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef):
                return node
        return None

    def functions(self, name: str) -> list[ast.FunctionDef]:
        return [n for n in ast.walk(self.tree) if isinstance(n, ast.FunctionDef) and n.name == name]


def load_modules() -> dict[str, Module]:
    modules = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(("provision/builders/", "provision/providers/")):
                continue  # the symlinks to builders/ and providers/
            modules[rel] = Module(rel, ast.parse(path.read_text(), filename=rel))
    return modules


MODULES = load_modules()


def module_file(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != "provision":
        return None
    if len(parts) > 1 and parts[1] in ("builders", "providers"):
        parts = parts[1:]
    for rel in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
        if rel in MODULES:
            return rel
    return None


class Unresolved(Exception):
    pass


def bound_value(node: ast.AST, name: str) -> ast.expr | None:
    """The value ``node`` assigns to ``name`` (``name = ...`` or ``name: T = ...``), if any."""
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == name for t in node.targets
    ):
        return node.value
    if (
        isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == name
    ):
        return node.value
    return None


Binding = tuple["Resolver", ast.expr, ast.FunctionDef | None]  # where, what, in which function


class Resolver:
    """Finds the strings an expression can hold (``strings``) and the program an argv
    expression starts with (``programs``)."""

    def __init__(self, module: Module) -> None:
        self.module = module

    def at(self, rel: str) -> Resolver:
        return Resolver(MODULES[rel])

    # -- names ------------------------------------------------------------------------------
    def name_values(self, name: str, scope: ast.FunctionDef | None) -> Iterator[Binding]:
        """Every expression ``name`` may be bound to, seen from ``scope``: its assignments in
        the function, else the parameter's default and what the module's callers pass, else
        the module's assignment or import."""
        if scope is not None:
            local = [value for node in ast.walk(scope) if (value := bound_value(node, name))]
            if local:
                yield from ((self, value, scope) for value in local)
                return
            from_parameter = list(self.parameter_values(name, scope))
            if from_parameter:
                yield from from_parameter
                return
        for node in self.module.tree.body:
            if value := bound_value(node, name):
                yield self, value, None
                return
        origin = self.imported(name)
        if origin is None:
            raise Unresolved(name)
        yield from origin[0].name_values(origin[1], None)

    def parameter_values(self, name: str, scope: ast.FunctionDef) -> Iterator[Binding]:
        params = scope.args
        positional = [a.arg for a in params.posonlyargs + params.args]
        defaults = dict(
            zip(positional[len(positional) - len(params.defaults) :], params.defaults, strict=True)
        )
        defaults.update(
            {
                a.arg: d
                for a, d in zip(params.kwonlyargs, params.kw_defaults, strict=True)
                if d is not None
            }
        )
        if name in defaults:
            yield self, defaults[name], None
        if name in positional:  # what the module's callers pass
            index = positional.index(name) - (1 if positional[0] == "self" else 0)
            for call in ast.walk(self.module.tree):
                if (
                    isinstance(call, ast.Call)
                    and call_name(call) == scope.name
                    and len(call.args) > index
                ):
                    yield self, call.args[index], self.module.function(call)

    def imported(self, name: str) -> tuple[Resolver, str] | None:
        """The module and original name of ``name`` when this module imports it (at the top
        or inside a function)."""
        for node in ast.walk(self.module.tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        rel = module_file(node.module)
                        if rel is None:
                            raise Unresolved(f"{name} from {node.module}")
                        return self.at(rel), alias.name
        return None

    def returns(self, name: str) -> Iterator[Binding]:
        functions = self.module.functions(name)
        if not functions:
            origin = self.imported(name)
            if origin is None:
                raise Unresolved(f"function {name}")
            yield from origin[0].returns(origin[1])
            return
        for function in functions:
            for node in ast.walk(function):
                if isinstance(node, ast.Return) and node.value is not None:
                    yield self, node.value, function

    def field_default(self, attribute: str) -> ast.expr:
        for node in ast.walk(self.module.tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (
                        isinstance(item, ast.AnnAssign)
                        and isinstance(item.target, ast.Name)
                        and item.target.id == attribute
                        and item.value
                    ):
                        return item.value
        raise Unresolved(f"field {attribute}")

    # -- what an expression holds -----------------------------------------------------------
    def strings(self, node: ast.expr, scope: ast.FunctionDef | None) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Tuple | ast.List):
            return set().union(*(self.strings(e, scope) for e in node.elts))
        if isinstance(node, ast.Starred):
            return self.strings(node.value, scope)
        if isinstance(node, ast.IfExp):
            return self.strings(node.body, scope) | self.strings(node.orelse, scope)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.strings(node.left, scope) | self.strings(node.right, scope)
        if isinstance(node, ast.Name):
            return set().union(*(r.strings(v, s) for r, v, s in self.name_values(node.id, scope)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return set().union(*(r.strings(v, s) for r, v, s in self.returns(node.func.id)))
        if isinstance(node, ast.Attribute):
            return self.strings(self.field_default(node.attr), None)
        raise Unresolved(ast.unparse(node))

    def programs(self, node: ast.expr, scope: ast.FunctionDef | None) -> set[str]:
        """The program an argv expression starts with (a wrapper such as fakeroot, and the
        program it wraps, both count)."""
        if isinstance(node, ast.List | ast.Tuple):
            if not node.elts:
                return set()  # a wrapper that wraps nothing here (fakeroot when root)
            found: set[str] = set()
            for element in node.elts:
                if isinstance(element, ast.Starred) and isinstance(element.value, ast.Call):
                    found |= self.programs(element.value, scope)  # a wrapper: go on
                    continue
                return found | self.programs(
                    element.value if isinstance(element, ast.Starred) else element, scope
                )
            raise Unresolved(ast.unparse(node))
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr == "argv" and node.args:
                return self.programs(node.args[0], scope)  # apt's argv(program, *args)
            if isinstance(node.func, ast.Name):
                return set().union(*(r.programs(v, s) for r, v, s in self.returns(node.func.id)))
            raise Unresolved(ast.unparse(node))
        if isinstance(node, ast.Name):
            return set().union(*(r.programs(v, s) for r, v, s in self.name_values(node.id, scope)))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.programs(node.left, scope)
        if isinstance(node, ast.IfExp):
            return self.programs(node.body, scope) | self.programs(node.orelse, scope)
        return self.strings(node, scope)


def call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def is_plugin_tools(node: ast.expr) -> bool:
    """``(tool for writer in writers for tool in writer.tools())`` or ``... in target.tools)``:
    the programs plug-ins declare (scanned where they declare them)."""

    def declares(it: ast.expr) -> bool:
        return (isinstance(it, ast.Call) and call_name(it) == "tools") or (
            isinstance(it, ast.Attribute) and it.attr == "tools"
        )

    return isinstance(node, ast.GeneratorExp | ast.ListComp) and any(
        declares(gen.iter) for gen in node.generators
    )


@dataclass
class Scan:
    run: set[str] = field(default_factory=set)  # programs run() starts
    declared: set[str] = field(default_factory=set)  # programs require_tools/tools() name
    unresolved: list[str] = field(default_factory=list)
    dynamic: set[tuple[str, str]] = field(default_factory=set)


def scan() -> Scan:
    result = Scan()
    for rel, module in MODULES.items():
        if rel == "provision/runner.py":
            continue  # the runner itself: subprocess.run(args)
        resolver = Resolver(module)
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Call) and call_name(node) in ("run", "_run") and node.args:
                scope = module.function(node)
                where = (rel, scope.name if scope else "")
                try:
                    programs = resolver.programs(node.args[0], scope)
                    if not programs:
                        raise Unresolved("no program")
                    result.run |= programs
                except Unresolved as exc:
                    if where in DYNAMIC_PROGRAMS:
                        result.dynamic.add(where)
                    else:
                        result.unresolved.append(
                            f"{rel}:{node.lineno}: run({ast.unparse(node.args[0])}): {exc}"
                        )
            elif isinstance(node, ast.Call) and call_name(node) == "require_tools" and node.args:
                if is_plugin_tools(node.args[0]):
                    continue  # the format writers' tools() and the targets' tools, scanned below
                try:
                    result.declared |= resolver.strings(node.args[0], module.function(node))
                except Unresolved as exc:
                    result.unresolved.append(f"{rel}:{node.lineno}: require_tools: {exc}")
            elif isinstance(node, ast.ClassDef):  # a target's ``tools: tuple[str, ...] = (...)``
                for item in node.body:
                    if (value := bound_value(item, "tools")) is not None:
                        try:
                            result.declared |= resolver.strings(value, None)
                        except Unresolved as exc:
                            result.unresolved.append(
                                f"{rel}:{item.lineno}: {node.name}.tools: {exc}"
                            )
            elif isinstance(node, ast.FunctionDef) and node.name == "tools":
                for _r, value, scope in resolver.returns("tools"):
                    if scope is node:
                        try:
                            result.declared |= resolver.strings(value, scope)
                        except Unresolved as exc:
                            result.unresolved.append(f"{rel}:{node.lineno}: tools(): {exc}")
    return result


def test_the_table_lists_exactly_the_programs_the_code_runs() -> None:
    found = scan()
    assert not found.unresolved, "programs the test cannot derive:\n" + "\n".join(found.unresolved)
    assert found.dynamic == DYNAMIC_PROGRAMS, "a commented dynamic call site is gone"
    table = set(TOOL_PACKAGES)
    assert sorted(found.run - table) == [], "run by the code but missing from TOOL_PACKAGES"
    assert sorted(table - found.run) == [], "in TOOL_PACKAGES but never run"
    assert sorted(found.declared - found.run) == [], "declared as needed but never run"
    # the ones this test was written for, so the scan itself cannot silently find nothing
    assert {"apt-cache", "apt-config", "fakeroot", "objcopy", "qemu-system-x86_64"} <= found.run


def test_every_program_in_the_table_is_installed_here() -> None:
    require_tools(TOOL_PACKAGES)  # setup.sh installs every package of the table


def test_a_missing_program_names_its_package() -> None:
    with pytest.raises(ToolMissingError) as caught:
        require_tools(["no-such-program-a", "tar", "no-such-program-b"])
    assert str(caught.value) == "missing programs: no-such-program-a, no-such-program-b"
    assert caught.value.hint == "install with: apt-get install no-such-program-a no-such-program-b"


def test_run_logs_each_command_at_debug_level(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level(logging.DEBUG, logger="provision.runner"):
        run(
            ["tar", "-cf", tmp_path / "empty file.tar", "--files-from", "/dev/null"],
            cwd=tmp_path,
            env={"SECRET_TOKEN": "hunter2"},
            input=b"also-secret",
        )
        with pytest.raises(CommandError) as caught:
            run(["tar", "-xf", tmp_path / "missing.tar"])
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "provision.runner"]
    assert lines[0] == (
        logging.DEBUG,
        f"run: tar -cf '{tmp_path}/empty file.tar' --files-from /dev/null  (in {tmp_path})",
    )
    assert lines[1][0] == logging.DEBUG and lines[1][1].startswith("exit code 0 after ")
    assert lines[2] == (logging.DEBUG, f"run: tar -xf {tmp_path}/missing.tar")
    assert lines[3][1].startswith("exit code 2 after ") and lines[3][1].endswith(": tar")
    assert "hunter2" not in caplog.text and "also-secret" not in caplog.text
    assert str(caught.value).startswith(
        f"command failed with exit code 2: tar -xf {tmp_path}/missing.tar\n"
    )


def test_a_program_path_that_does_not_exist_is_a_command_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=f"cannot run {tmp_path}/nothing: No such file"):
        run([tmp_path / "nothing"])
