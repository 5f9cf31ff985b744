"""Merging several spec files (``provision build a.yml b.yml``), and the checks that need
the whole merged spec.

LinuxKit's rules, kept as they are:

* ``kernel``: each field takes the last non-empty value (``image``, ``cmdline``, ``binary``,
  ``tar``, ``ucode``);
* ``init``, ``onboot``, ``onshutdown``, ``services``, ``files``, ``volumes``: lists are
  appended in file order;
* a duplicate name within ``services`` or ``volumes`` is an error; ``onboot`` and
  ``onshutdown`` entries may share a name (LinuxKit numbers them: ``000-mount``,
  ``001-mount``), and each runs, in order.

This project goes further, so a later file can change what an earlier one declared without
copying it (both are errors in LinuxKit, which rejects unknown keys):

* ``replace: true`` on an entry of ``onboot``, ``onshutdown``, ``services`` or ``volumes``
  replaces the earlier entry with the same ``name`` *in place* (onboot order is kept); on a
  ``files`` entry it replaces the earlier entry with the same ``path``. Nothing to replace is
  an error (it catches typos), and so is a name that several earlier ``onboot`` or
  ``onshutdown`` entries share (which one would be meant is unclear).
* a top-level ``remove`` mapping drops entries written by *earlier* files::

      remove:
        services: [getty]          # by name; also onboot, onshutdown, volumes
        files: [/etc/issue]        # by path ("/etc/issue" and "etc/issue" are the same)
        init: [linuxkit/ca-certificates:v1.0.0]   # by reference as written

  A removal that matches nothing, or a name several earlier entries share, is an error. Removals apply before the file's own entries
  are added, so a file may remove an entry and add a new one under the same name.

Every problem keeps the file, line and column where the offending entry was written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from provision.errors import Problem
from provision.spec.image import (
    ENTRY_SECTIONS,
    FileEntry,
    ImageEntry,
    ImageSpec,
    KernelSpec,
    Located,
    ParsedFile,
    VolumeSpec,
)
from provision.spec.source import Mark, YamlList, YamlMap

SECTIONS = ("init", "onboot", "onshutdown", "services", "files", "volumes")
SINGULAR = {
    "onboot": "onboot entry",
    "onshutdown": "onshutdown entry",
    "services": "service",
    "volumes": "volume",
    "files": "file",
    "init": "init image",
}


def normalise_file_path(path: str) -> str:
    return "/".join(part for part in path.split("/") if part not in ("", "."))


def identity(section: str, value: Any) -> str:
    """What names an entry of ``section`` for replace, remove and duplicate checks."""
    if section == "init":
        return str(value)
    if section == "files":
        assert isinstance(value, FileEntry)
        return normalise_file_path(value.path)
    return str(value.name)


def merge_parsed_files(parsed_files: Sequence[ParsedFile]) -> tuple[ImageSpec, list[Problem]]:
    """Merge the files in order; return the spec and every problem found on the way."""
    problems: list[Problem] = []
    acc: dict[str, list[Located]] = {section: [] for section in SECTIONS}
    kernel: dict[str, tuple[Any, Mark]] = {}
    kernel_mark: Mark | None = None
    for parsed in parsed_files:
        for attr, (value, mark) in parsed.kernel.items():
            if value != "":
                kernel[attr] = (value, mark)
        kernel_mark = parsed.kernel_mark or kernel_mark
        problems.extend(apply_removals(parsed, acc))
        for section in SECTIONS:
            problems.extend(apply_entries(section, getattr(parsed, section), acc[section]))
    problems.extend(check_duplicates(acc))
    kernel_spec = None
    if kernel or kernel_mark is not None:
        if "image" not in kernel:
            assert kernel_mark is not None
            problems.append(kernel_mark.problem("kernel", "missing required key 'image'"))
        else:
            kernel_spec = build_kernel(kernel)
    volumes = {loc.value.name: loc.value for loc in acc["volumes"]}
    containers = {loc.value.name for s in ENTRY_SECTIONS for loc in acc[s]}
    for section in ENTRY_SECTIONS:
        for loc in acc[section]:
            problems.extend(check_entry_binds(loc, volumes))
            problems.extend(check_entry_ids(loc, containers))
    spec = ImageSpec(
        kernel=kernel_spec,
        init=tuple(loc.value for loc in acc["init"]),
        onboot=_values(acc["onboot"], ImageEntry),
        onshutdown=_values(acc["onshutdown"], ImageEntry),
        services=_values(acc["services"], ImageEntry),
        files=_values(acc["files"], FileEntry),
        volumes=_values(acc["volumes"], VolumeSpec),
        sources=tuple(parsed.file for parsed in parsed_files),
    )
    return spec, problems


def _values(items: Iterable[Located], kind: type) -> tuple[Any, ...]:
    values = tuple(loc.value for loc in items)
    assert all(isinstance(v, kind) for v in values)
    return values


def build_kernel(fields: dict[str, tuple[Any, Mark]]) -> KernelSpec:
    def value(name: str, default: Any) -> Any:
        return fields.get(name, (default,))[0]

    tar = value("tar", "kernel.tar")
    return KernelSpec(
        image=value("image", ""),
        cmdline=value("cmdline", ""),
        binary=value("binary", "kernel"),
        tar=None if tar == "none" else tar,
        ucode=value("ucode", None),
    )


def apply_removals(parsed: ParsedFile, acc: dict[str, list[Located]]) -> list[Problem]:
    problems: list[Problem] = []
    for removal in parsed.removals:
        wanted = normalise_file_path(removal.name) if removal.section == "files" else removal.name
        items = acc[removal.section]
        matches = [
            i for i, loc in enumerate(items) if identity(removal.section, loc.value) == wanted
        ]
        if not matches:
            problems.append(
                removal.mark.problem(
                    removal.key,
                    f"no earlier {SINGULAR[removal.section]} {removal.name!r} to remove",
                )
            )
        elif len(matches) > 1:
            problems.append(
                removal.mark.problem(
                    removal.key, _ambiguous(removal.section, removal.name, len(matches), "remove")
                )
            )
        else:
            del items[matches[0]]
    return problems


def apply_entries(section: str, entries: Iterable[Located], items: list[Located]) -> list[Problem]:
    problems: list[Problem] = []
    for loc in entries:
        if not loc.replace:
            items.append(loc)
            continue
        wanted = identity(section, loc.value)
        matches = [i for i, old in enumerate(items) if identity(section, old.value) == wanted]
        if not matches:
            problems.append(
                loc.mark.problem(
                    f"{loc.key}.replace", f"no earlier {SINGULAR[section]} {wanted!r} to replace"
                )
            )
            continue
        if len(matches) > 1:
            problems.append(
                loc.mark.problem(
                    f"{loc.key}.replace", _ambiguous(section, wanted, len(matches), "replace")
                )
            )
            continue
        items[matches[0]] = loc
    return problems


def _ambiguous(section: str, name: str, count: int, verb: str) -> str:
    return (
        f"{count} earlier {section} entries are named {name!r}: {verb} works on a unique "
        "name only: give them distinct names"
    )


# onboot and onshutdown entries may share a name (LinuxKit numbers their directories)
UNIQUE_NAME_SECTIONS = ("services", "volumes")


def check_duplicates(acc: dict[str, list[Located]]) -> list[Problem]:
    problems: list[Problem] = []
    for section in UNIQUE_NAME_SECTIONS:
        seen: dict[str, Located] = {}
        for loc in acc[section]:
            name = identity(section, loc.value)
            first = seen.get(name)
            if first is None:
                seen[name] = loc
                continue
            where = (
                f"line {first.mark.line}"
                if first.mark.file == loc.mark.file
                else f"{first.mark.file}:{first.mark.line}"
            )
            problems.append(
                loc.mark.problem(
                    f"{loc.key}.name",
                    f"duplicate {SINGULAR[section]} name {name!r} (first at "
                    f"{where}; use replace: true to override it)",
                )
            )
    return problems


def _item_marks(loc: Located, key: str) -> tuple[str, Any]:
    raw = loc.raw
    if isinstance(raw, YamlMap) and isinstance(raw.get(key), YamlList):
        return f"{loc.key}.{key}", raw[key]
    return f"{loc.key}.{key}", None


def check_entry_binds(loc: Located, volumes: dict[str, VolumeSpec]) -> list[Problem]:
    """Bind sources that are not absolute name volumes; a read-only volume binds ``ro``."""
    entry: ImageEntry = loc.value
    problems: list[Problem] = []
    for key, binds in (("binds", entry.binds), ("binds.add", entry.binds_add)):
        path, raw = _item_marks(loc, key)
        for i, bind in enumerate(binds or ()):
            mark = raw.item_mark(i) if raw is not None else loc.mark
            message = check_volume_bind(bind, volumes)
            if message:
                problems.append(mark.problem(f"{path}[{i}]", message))
    return problems


def check_volume_bind(bind: str, volumes: dict[str, VolumeSpec]) -> str | None:
    """Why ``bind`` (already syntax-checked) does not fit the declared volumes, or None."""
    parts = bind.split(":")
    source = parts[0]
    if source.startswith("/"):
        return None
    volume = volumes.get(source)
    if volume is None:
        known = ", ".join(sorted(volumes)) or "none declared"
        return f"bind source {source!r} is not a declared volume (volumes: {known})"
    options = parts[2].split(",") if len(parts) == 3 else ["rw"]
    if volume.readonly and "ro" not in options:
        return f"read-write bind of read-only volume {source!r} (add :ro)"
    return None


def check_entry_ids(loc: Located, containers: set[str]) -> list[Problem]:
    """uid, gid and additionalGids names must be root, a number or a container's name
    (LinuxKit gives each container an id from 100 up, usable by name)."""
    entry: ImageEntry = loc.value
    problems: list[Problem] = []
    raw = loc.raw if isinstance(loc.raw, YamlMap) else None
    values: list[tuple[str, Any, Mark]] = []
    for key, value in (("uid", entry.uid), ("gid", entry.gid)):
        if value is not None:
            values.append(
                (f"{loc.key}.{key}", value, raw.value_mark(key) if raw is not None else loc.mark)
            )
    path, items = _item_marks(loc, "additionalGids")
    for i, value in enumerate(entry.additional_gids or ()):
        values.append(
            (f"{path}[{i}]", value, items.item_mark(i) if items is not None else loc.mark)
        )
    for key, value, mark in values:
        if isinstance(value, str) and not (
            value in ("", "root") or value.isdigit() or value in containers
        ):
            problems.append(
                mark.problem(
                    key,
                    f"unknown id name {value!r}: use a number, root, or the name of a "
                    "container in this spec",
                )
            )
    return problems
