"""``pkg/NAME/lock.yml``: the exact package versions a recipe builds from.

Written by ``provision pkg lock`` from apt's signature-verified index and committed beside the
recipe: each package's version, architecture, archive file name, size and SHA256. A kernel
recipe also records which versioned package its meta package resolved to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from provision.errors import ProvisionError
from provision.fsutil import write_text_atomic

LOCK_VERSION = 1
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
HEADER = (
    "# Written by `provision pkg lock`: the Debian packages this recipe builds from, as apt's\n"
    "# signature-verified index named them. Commit it; `provision pkg build` downloads exactly\n"
    "# these files and refuses any whose SHA256 differs.\n"
)


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: str

    @property
    def deb_name(self) -> str:
        """The .deb's file name (the last part of the archive path)."""
        return self.filename.rsplit("/", 1)[-1]

    def to_yaml(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "architecture": self.architecture,
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Resolution:
    """A meta package (``linux-image-cloud-amd64``) and the package it stood for."""

    name: str
    version: str
    package: str


@dataclass(frozen=True)
class Lock:
    architecture: str
    packages: tuple[LockedPackage, ...]
    resolved: tuple[Resolution, ...] = ()
    # elf_closure: resolve: packages added for the libraries, and the paths kept of each
    libraries: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def package(self, name: str) -> LockedPackage:
        """The locked package ``name`` (a meta package gives what it resolved to)."""
        for resolution in self.resolved:
            if resolution.name == name:
                name = resolution.package
        for package in self.packages:
            if package.name == name:
                return package
        raise KeyError(name)

    def covers(self, names: tuple[str, ...]) -> list[str]:
        """The names of ``names`` this lock does not resolve."""
        missing = []
        for name in names:
            try:
                self.package(name)
            except KeyError:
                missing.append(name)
        return missing

    def to_yaml(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "lock_version": LOCK_VERSION,
            "architecture": self.architecture,
            "packages": {p.name: p.to_yaml() for p in sorted(self.packages, key=lambda p: p.name)},
        }
        if self.resolved:
            data["resolved"] = {
                r.name: {"version": r.version, "package": r.package}
                for r in sorted(self.resolved, key=lambda r: r.name)
            }
        if self.libraries:
            data["libraries"] = {name: list(paths) for name, paths in sorted(self.libraries)}
        return data


def dump_lock(lock: Lock) -> str:
    return HEADER + yaml.safe_dump(lock.to_yaml(), sort_keys=False, default_flow_style=False)


def write_lock(path: Path, lock: Lock) -> None:
    """Write ``lock`` to ``path`` through a temporary name."""
    write_text_atomic(path, dump_lock(lock))


def _bad(path: Path, message: str) -> ProvisionError:
    return ProvisionError(
        f"{path}: {message}", hint=f"regenerate it: provision pkg lock {path.parent}"
    )


def read_lock(path: Path) -> Lock:
    """Parse a lock file; a missing one is an error that says how to make it."""
    if not path.is_file():
        raise ProvisionError(
            f"{path.parent}: no lock file ({path.name})",
            hint=f"resolve the package versions first: provision pkg lock {path.parent}",
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise _bad(path, f"invalid YAML: {exc}") from None
    if not isinstance(data, dict) or data.get("lock_version") != LOCK_VERSION:
        raise _bad(path, f"not a lock file of version {LOCK_VERSION}")
    arch = data.get("architecture")
    packages_data = data.get("packages")
    if not isinstance(arch, str) or not isinstance(packages_data, dict):
        raise _bad(path, "needs architecture and packages")
    packages = []
    for name, entry in packages_data.items():
        packages.append(_parse_package(path, str(name), entry))
    resolved = []
    resolved_data = data.get("resolved", {})
    if not isinstance(resolved_data, dict):
        raise _bad(path, "resolved: must be a mapping")
    for name, entry in resolved_data.items():
        if not isinstance(entry, Mapping) or not all(
            isinstance(entry.get(k), str) for k in ("version", "package")
        ):
            raise _bad(path, f"resolved.{name}: needs version and package")
        resolved.append(Resolution(str(name), entry["version"], entry["package"]))
    libraries = []
    libraries_data = data.get("libraries", {})
    if not isinstance(libraries_data, dict):
        raise _bad(path, "libraries: must be a mapping")
    for name, paths in libraries_data.items():
        if not isinstance(paths, list) or not all(
            isinstance(p, str) and p.startswith("/") and ".." not in p.split("/") for p in paths
        ):
            raise _bad(path, f"libraries.{name}: must list absolute paths")
        if name not in {p.name for p in packages}:
            raise _bad(path, f"libraries.{name}: not one of the locked packages")
        libraries.append((str(name), tuple(paths)))
    return Lock(arch, tuple(packages), tuple(resolved), tuple(sorted(libraries)))


def _parse_package(path: Path, name: str, entry: Any) -> LockedPackage:
    if not isinstance(entry, Mapping):
        raise _bad(path, f"packages.{name}: must be a mapping")
    fields = {}
    for key in ("version", "architecture", "filename", "sha256"):
        value = entry.get(key)
        if not isinstance(value, str) or not value:
            raise _bad(path, f"packages.{name}.{key}: missing")
        fields[key] = value
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(path, f"packages.{name}.size: missing")
    if not _SHA256_RE.match(fields["sha256"]):
        raise _bad(path, f"packages.{name}.sha256: not a SHA256 in hex")
    filename = fields["filename"]
    if filename.startswith("/") or ".." in filename.split("/") or not filename.endswith(".deb"):
        raise _bad(path, f"packages.{name}.filename: {filename!r} is not an archive path")
    return LockedPackage(
        name, fields["version"], fields["architecture"], filename, size, fields["sha256"]
    )
