"""Component recipes: ``pkg/NAME/build.yml`` parsed into a frozen :class:`Recipe`.

Every problem of a recipe is collected and reported at once, each located by file, line and
key path (see docs/pkg-recipes.md for the format).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provision.errors import Problem, ProvisionError, SpecError
from provision.spec.source import compose_yaml, read_text_file

RECIPE_FILE = "build.yml"
LOCK_FILE = "lock.yml"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_MODULE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_TOP_KEYS = frozenset(
    {
        "name",
        "packages",
        "keep",
        "files",
        "symlinks",
        "directories",
        "config",
        "label",
        "elf_closure",
        "kernel",
    }  # fmt: skip
)
# The keys of an OCI image config's ``config`` section.
IMAGE_CONFIG_KEYS = frozenset(
    {
        "User",
        "ExposedPorts",
        "Env",
        "Entrypoint",
        "Cmd",
        "Volumes",
        "WorkingDir",
        "Labels",
        "StopSignal",
        "ArgsEscaped",
    }  # fmt: skip
)
_FILE_KEYS = frozenset({"path", "source", "contents", "mode", "uid", "gid"})
_KERNEL_KEYS = frozenset({"package", "modules", "binary", "tar"})
MOBY_LABEL = "org.mobyproject.config"


@dataclass(frozen=True)
class FileSpec:
    """An extra file: from the recipe directory (``source``) or inline (``contents``)."""

    path: str
    mode: int
    source: str | None = None
    contents: str | None = None
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class KernelSpec:
    """The kernel part of a recipe: the (meta) package and the modules to ship."""

    package: str
    modules: tuple[str, ...]
    binary: str = "kernel"
    tar: str = "kernel.tar"


@dataclass(frozen=True)
class Recipe:
    directory: Path
    name: str
    packages: tuple[str, ...] = ()
    keep: tuple[tuple[str, tuple[str, ...]], ...] = ()
    files: tuple[FileSpec, ...] = ()
    symlinks: tuple[tuple[str, str], ...] = ()
    directories: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    label: Mapping[str, Any] | None = None
    elf_closure: bool = False
    resolve_libraries: bool = False  # elf_closure: resolve
    kernel: KernelSpec | None = None

    @property
    def recipe_file(self) -> Path:
        return self.directory / RECIPE_FILE

    @property
    def lock_file(self) -> Path:
        return self.directory / LOCK_FILE

    def keep_globs(self, package: str) -> tuple[str, ...] | None:
        """The globs kept of ``package``; None keeps everything."""
        for name, globs in self.keep:
            if name == package:
                return globs
        return None

    def all_packages(self) -> tuple[str, ...]:
        """Every package name the lock must resolve (the kernel's meta package included)."""
        extra = (self.kernel.package,) if self.kernel else ()
        return tuple(dict.fromkeys(self.packages + extra))


class _Locator:
    """Line and column of key paths, from the composed YAML node tree."""

    def __init__(self, file: str, root: yaml.Node | None) -> None:
        self.file = file
        self.root = root
        self.problems: list[Problem] = []

    def _node(self, path: Sequence[str | int]) -> yaml.Node | None:
        node = self.root
        for part in path:
            if isinstance(node, yaml.MappingNode):
                found = None
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == part:
                        found = value
                node = found
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                node = node.value[part] if part < len(node.value) else None
            else:
                return node
            if node is None:
                return None
        return node

    def add(self, path: Sequence[str | int], message: str) -> None:
        node = self._node(path)
        line, column = (node.start_mark.line + 1, node.start_mark.column + 1) if node else (0, 0)
        key = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p)
                      for i, p in enumerate(path))  # fmt: skip
        self.problems.append(Problem(self.file, line, column, key, message))


def _image_path(value: Any) -> str | None:
    """A clean absolute path inside the image, or None when it is not one."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        return None
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/" + "/".join(parts)


def _mode(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= 0o7777 else None
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        return int(value, 8)
    return None


def _str_list(loc: _Locator, value: Any, path: list[str | int]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        loc.add(path, "must be a list of strings")
        return []
    return list(value)


def load_recipe(directory: Path | str) -> Recipe:
    """Read and validate ``DIRECTORY/build.yml``; raise SpecError listing every problem."""
    directory = Path(directory)
    file = directory / RECIPE_FILE
    if not file.is_file():
        raise ProvisionError(
            f"{file}: no recipe here", hint="a component is a directory holding build.yml"
        )
    text, problems = read_text_file(file)  # a regular file, bounded
    if text is None:
        raise SpecError(problems)
    root, problems = compose_yaml(text, str(file))  # depth-limited, located
    if problems:
        raise SpecError(problems)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise SpecError([Problem(str(file), line, 0, "", f"invalid YAML: {exc}")]) from None
    return parse_recipe(directory, data, _Locator(str(file), root))


def parse_recipe(directory: Path, data: Any, loc: _Locator | None = None) -> Recipe:
    loc = loc or _Locator(str(directory / RECIPE_FILE), None)
    if not isinstance(data, dict):
        loc.add([], "a recipe is a mapping")
        raise SpecError(loc.problems)
    for key in sorted(set(data) - _TOP_KEYS, key=str):
        loc.add([str(key)], "unknown key (known: " + ", ".join(sorted(_TOP_KEYS)) + ")")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        loc.add(["name"], "required: lower-case letters, digits, '.', '_', '-'")
        name = ""
    packages = _parse_packages(loc, data.get("packages", []))
    keep = _parse_keep(loc, data.get("keep", {}), packages)
    files = _parse_files(loc, directory, data.get("files", []))
    symlinks = _parse_symlinks(loc, data.get("symlinks", {}))
    directories = []
    for i, value in enumerate(_str_list(loc, data.get("directories", []), ["directories"])):
        path = _image_path(value)
        if path is None:
            loc.add(["directories", i], f"{value!r}: not an absolute path inside the image")
        else:
            directories.append(path)
    config = data.get("config", {})
    if not isinstance(config, dict):
        loc.add(["config"], "must be a mapping (the OCI image config)")
        config = {}
    for key in sorted(set(config) - IMAGE_CONFIG_KEYS, key=str):
        loc.add(["config", str(key)], "not an OCI image config key (known: "
                + ", ".join(sorted(IMAGE_CONFIG_KEYS)) + ")")  # fmt: skip
    label = data.get("label")
    if label is not None and not isinstance(label, dict):
        loc.add(["label"], "must be a mapping (LinuxKit's image entry keys)")
        label = None
    elf_closure = data.get("elf_closure", False)
    resolve_libraries = elf_closure == "resolve"
    if resolve_libraries:
        elf_closure = True
    elif not isinstance(elf_closure, bool):
        loc.add(["elf_closure"], "must be true, false or resolve")
        elf_closure = False
    kernel = _parse_kernel(loc, data.get("kernel"))
    if not packages and kernel is None:
        loc.add(["packages"], "a recipe needs packages or a kernel")
    if loc.problems:
        raise SpecError(loc.problems)
    return Recipe(
        directory=directory,
        name=str(name),
        packages=tuple(packages),
        keep=tuple(keep),
        files=tuple(files),
        symlinks=tuple(symlinks),
        directories=tuple(directories),
        config=config,
        label=label,
        elf_closure=elf_closure,
        resolve_libraries=resolve_libraries,
        kernel=kernel,
    )


def _parse_packages(loc: _Locator, value: Any) -> list[str]:
    packages = _str_list(loc, value, ["packages"])
    for i, package in enumerate(packages):
        if not _PACKAGE_RE.match(package):
            loc.add(["packages", i], f"{package!r}: not a Debian package name")
        elif package in packages[:i]:
            loc.add(["packages", i], f"{package}: listed twice")
    return packages


def _parse_keep(
    loc: _Locator, value: Any, packages: list[str]
) -> list[tuple[str, tuple[str, ...]]]:
    if not isinstance(value, dict):
        loc.add(["keep"], "must map package names to lists of globs")
        return []
    keep = []
    for package, globs in value.items():
        if package not in packages:
            loc.add(["keep", str(package)], "not one of the recipe's packages")
            continue
        patterns = _str_list(loc, globs, ["keep", package])
        for i, glob in enumerate(patterns):
            if not glob.startswith("/") or ".." in glob.split("/"):
                loc.add(["keep", package, i], f"{glob!r}: a glob of absolute paths, as in the .deb")
        if not patterns:
            loc.add(["keep", package], "keeps nothing: drop the package instead")
        keep.append((package, tuple(patterns)))
    return sorted(keep)


def _parse_files(loc: _Locator, directory: Path, value: Any) -> list[FileSpec]:
    if not isinstance(value, list):
        loc.add(["files"], "must be a list of {path, source|contents, mode}")
        return []
    files: list[FileSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        where: list[str | int] = ["files", i]
        if not isinstance(entry, dict):
            loc.add(where, "must be a mapping {path, source|contents, mode}")
            continue
        for key in sorted(set(entry) - _FILE_KEYS, key=str):
            loc.add(
                [*where, str(key)], "unknown key (known: " + ", ".join(sorted(_FILE_KEYS)) + ")"
            )
        path = _image_path(entry.get("path"))
        if path is None:
            loc.add([*where, "path"], "required: an absolute path inside the image")
        elif path in seen:
            loc.add([*where, "path"], f"{path}: given twice")
        source, contents = entry.get("source"), entry.get("contents")
        if (source is None) == (contents is None):
            loc.add(where, "give exactly one of source and contents")
        if source is not None:
            if not isinstance(source, str) or source.startswith("/") or ".." in source.split("/"):
                loc.add([*where, "source"], "a path relative to the recipe directory, inside it")
            elif not (directory / source).is_file():
                loc.add([*where, "source"], f"{directory / source}: no such file")
        if contents is not None and not isinstance(contents, str):
            loc.add([*where, "contents"], "must be a string")
        mode = _mode(entry.get("mode", "0644"))
        if mode is None:
            loc.add([*where, "mode"], 'an octal string such as "0755"')
        uid, gid = entry.get("uid", 0), entry.get("gid", 0)
        for key, number in (("uid", uid), ("gid", gid)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                loc.add([*where, key], "a number >= 0")
        if path is not None and mode is not None:
            seen.add(path)
            files.append(FileSpec(path, mode, source if isinstance(source, str) else None,
                                  contents if isinstance(contents, str) else None,
                                  int(uid), int(gid)))  # fmt: skip
    return files


def _parse_symlinks(loc: _Locator, value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        loc.add(["symlinks"], "must map paths to link targets")
        return []
    links = []
    for raw, target in value.items():
        path = _image_path(raw)
        if path is None:
            loc.add(["symlinks", str(raw)], "not an absolute path inside the image")
        elif not isinstance(target, str) or not target or "\0" in target:
            loc.add(["symlinks", str(raw)], "the link target must be a non-empty string")
        else:
            links.append((path, target))
    return sorted(links)


def _parse_kernel(loc: _Locator, value: Any) -> KernelSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        loc.add(["kernel"], "must be a mapping {package, modules}")
        return None
    for key in sorted(set(value) - _KERNEL_KEYS, key=str):
        loc.add(
            ["kernel", str(key)], "unknown key (known: " + ", ".join(sorted(_KERNEL_KEYS)) + ")"
        )
    package = value.get("package")
    if not isinstance(package, str) or not _PACKAGE_RE.match(package):
        loc.add(["kernel", "package"], "required: the kernel (meta) package name")
        package = ""
    modules = _str_list(loc, value.get("modules", []), ["kernel", "modules"])
    for i, module in enumerate(modules):
        if not _MODULE_RE.match(module):
            loc.add(["kernel", "modules", i], f"{module!r}: a module name such as virtio_net")
    names = {}
    for key in ("binary", "tar"):
        name = value.get(key, KernelSpec.binary if key == "binary" else KernelSpec.tar)
        if _image_path("/" + str(name)) != "/" + str(name):
            loc.add(["kernel", key], "a file name at the image's top")
        names[key] = str(name)
    return KernelSpec(
        package, tuple(m.replace("-", "_") for m in modules), names["binary"], names["tar"]
    )


def find_recipes(root: Path) -> list[Path]:
    """Every recipe directory under ``root`` (pkg/), sorted."""
    return sorted(p.parent for p in root.glob(f"*/{RECIPE_FILE}"))
