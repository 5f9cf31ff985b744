"""``elf_closure: resolve``: at lock time, find the library packages that ship what the
recipe's ELF files need, following the Debian dependencies of the recipe's packages (only into
packages of section ``libs``), and record them with the paths to keep in the lock. Builds then
take exactly those files, and the usual closure check still runs."""

from __future__ import annotations

import posixpath
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from provision.builders.pkg.apt import Apt, parse_depends
from provision.builders.pkg.deb import DebFile, iter_deb_files
from provision.builders.pkg.elf import check_elf_closure
from provision.builders.pkg.lock import Lock, LockedPackage
from provision.builders.pkg.recipe import Recipe
from provision.oci.imagebuild import LayerEntry

MAX_CANDIDATES = 200
Assemble = Callable[[Recipe, Lock, bool], dict[str, LayerEntry]]
Progress = Callable[[str], None]


def _depends(record: Mapping[str, str]) -> list[str]:
    names = []
    for field in ("Pre-Depends", "Depends"):
        for group in parse_depends(record.get(field, "")):
            names.append(group[0])
    return names


def _with_link_targets(hits: Iterable[DebFile], by_path: Mapping[str, DebFile]) -> set[str]:
    """The hit paths plus every symlink target they lead to inside the package."""
    keep: set[str] = set()
    pending = list(hits)
    while pending:
        item = pending.pop()
        if item.path in keep:
            continue
        keep.add(item.path)
        if item.entry.kind == "symlink":
            link = item.entry.linkname
            target = posixpath.normpath(
                link if link.startswith("/") else posixpath.join(posixpath.dirname(item.path), link)
            )
            if target in by_path:
                pending.append(by_path[target])
    return keep


def resolve_libraries(
    recipe: Recipe,
    lock: Lock,
    apt: Apt,
    deb_cache: Path,
    assemble: Assemble,
    progress: Progress,
) -> Lock:
    """``lock`` plus the library packages (and kept paths) the image's ELF files need."""
    entries = assemble(recipe, lock, False)
    queue: deque[str] = deque()
    for _package, record in apt.resolve_many([p.name for p in lock.packages],
                                             lock.architecture).values():  # fmt: skip
        queue.extend(_depends(record))
    seen = {p.name for p in lock.packages} | set(recipe.all_packages())
    added: dict[str, tuple[LockedPackage, set[str]]] = {}
    contents: dict[str, dict[str, DebFile]] = {}

    def take(name: str, package: LockedPackage, wanted: set[str]) -> bool:
        by_path = contents[name]
        hits = [by_path[p] for p in sorted(wanted) if p in by_path]
        if not hits:
            return False
        keep = _with_link_targets(hits, by_path)
        for path in keep:
            entries.setdefault(path, by_path[path].entry)
        added.setdefault(name, (package, set()))[1].update(keep)
        return True

    def search(name: str, package: LockedPackage, wanted: set[str]) -> bool:
        progress(f"libraries: looking in {name}")
        deb = apt.download(package, deb_cache)
        contents[name] = {f.path: f for f in iter_deb_files(deb, f"{name} {package.version}")}
        return take(name, package, wanted)

    while True:
        missing = check_elf_closure(entries)
        if not missing:
            break
        wanted = {path for m in missing for path in m.paths}
        found = False
        for name, (package, _keep) in list(added.items()):
            found = take(name, package, wanted) or found
        while queue and not found and len(seen) < MAX_CANDIDATES:
            frontier = list(dict.fromkeys(n for n in queue if n not in seen))
            queue.clear()
            seen.update(frontier)
            # a virtual package or one this index lacks is left out
            known = apt.resolve_many(frontier, lock.architecture)
            libraries = [(n, *known[n]) for n in frontier if n in known
                         and known[n][1].get("Section", "").rsplit("/", 1)[-1] == "libs"]  # fmt: skip
            for _name, _package, record in libraries:
                queue.extend(_depends(record))
            for name, package, _record in libraries:
                found = search(name, package, wanted) or found

        if not found:
            break  # the build's closure check reports what is still missing
    return Lock(
        lock.architecture,
        lock.packages + tuple(package for package, _keep in added.values()),
        lock.resolved,
        tuple(sorted((name, tuple(sorted(keep))) for name, (_p, keep) in added.items())),
    )
