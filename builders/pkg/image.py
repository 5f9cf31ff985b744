"""From the entries a recipe selects to an OCI image: the file tree (parents added, recipe
files over package files), the image config with its ``org.mobyproject.config`` label, and
the recipe's tag (a hash of the recipe directory, its lock included)."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from provision.builders.pkg.lock import Lock
from provision.builders.pkg.recipe import MOBY_LABEL, Recipe
from provision.errors import ProvisionError
from provision.fsutil import file_sha256_hex
from provision.oci.imagebuild import LayerEntry
from provision.oci.model import Platform

# Bump when the builder changes what it writes for the same recipe and lock: tags change too.
BUILDER_VERSION = "1"
TAG_LENGTH = 12
IMAGE_PREFIX = "provision/"
PACKAGES_LABEL = "org.provision.packages"
_DEBIAN_PLATFORMS = {
    "amd64": Platform("linux", "amd64"),
    "arm64": Platform("linux", "arm64", "v8"),
    "armhf": Platform("linux", "arm", "v7"),
    "armel": Platform("linux", "arm", "v5"),
    "i386": Platform("linux", "386"),
    "ppc64el": Platform("linux", "ppc64le"),
    "s390x": Platform("linux", "s390x"),
    "riscv64": Platform("linux", "riscv64"),
}


def recipe_tag(directory: Path) -> str:
    """12 hex digits of SHA256 over the builder version and every file of the recipe
    directory (path, executable bit, content; lock.yml included)."""
    digest = hashlib.sha256(f"provision-pkg {BUILDER_VERSION}\n".encode())
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if any(part.startswith(".") or part == "__pycache__" for part in rel.split("/")):
            continue
        if path.is_symlink():
            digest.update(f"L {rel} {os.readlink(path)}\n".encode())
        elif path.is_file():
            kind = "X" if os.access(path, os.X_OK) else "F"
            content = file_sha256_hex(path)
            digest.update(f"{kind} {rel} {content}\n".encode())
    return digest.hexdigest()[:TAG_LENGTH]


def image_name(recipe: Recipe, tag: str) -> str:
    return f"{IMAGE_PREFIX}{recipe.name}:{tag}"


def platform_for(architecture: str) -> Platform:
    platform = _DEBIAN_PLATFORMS.get(architecture)
    if platform is None:
        raise ProvisionError(f"no OCI platform known for Debian architecture {architecture}")
    return platform


def canonical_label(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def image_config(recipe: Recipe, lock: Lock) -> dict[str, Any]:
    """The OCI ``config`` section: the recipe's, plus the moby label and the package list."""
    config = {k: v for k, v in recipe.config.items()}
    labels = dict(config.get("Labels") or {})
    if recipe.label is not None:
        labels[MOBY_LABEL] = canonical_label(recipe.label)
    labels[PACKAGES_LABEL] = " ".join(
        f"{p.name}={p.version}" for p in sorted(lock.packages, key=lambda p: p.name)
    )
    config["Labels"] = dict(sorted(labels.items()))
    return config


class ImageFiles:
    """The files of one image by absolute path; later additions replace earlier ones."""

    def __init__(self) -> None:
        self.entries: dict[str, LayerEntry] = {}
        self.origins: dict[str, str] = {}

    def add(self, path: str, entry: LayerEntry, origin: str, *, replace: bool = True) -> None:
        old = self.entries.get(path)
        if old is not None and not replace:
            return
        if old is not None and old.kind == "dir" and entry.kind == "dir":
            return  # keep the first directory's mode
        if (
            old is not None
            and old.kind == "dir"
            and any(p.startswith(path + "/") for p in self.entries)
        ):
            raise ProvisionError(
                f"{origin}: {path} would replace the directory {self.origins[path]} made"
            )
        self.entries[path] = _with_path(entry, path)
        self.origins[path] = origin

    def add_all(self, items: Iterable[tuple[str, LayerEntry]], origin: str) -> None:
        for path, entry in items:
            self.add(path, entry, origin)

    def complete(self) -> dict[str, LayerEntry]:
        """All entries with every missing parent directory (0755), checking that no file's
        parent is a file."""
        entries = dict(self.entries)
        for path in list(entries):
            parent = posixpath.dirname(path)
            while parent != "/":
                existing = entries.get(parent)
                if existing is None:
                    entries[parent] = LayerEntry.dir(parent.lstrip("/"))
                elif existing.kind != "dir":
                    raise ProvisionError(
                        f"{path} ({self.origins.get(path, 'parent')}) lies under {parent}, "
                        f"which is a {existing.kind} ({self.origins.get(parent, '?')})"
                    )
                parent = posixpath.dirname(parent)
        return entries


def _with_path(entry: LayerEntry, path: str) -> LayerEntry:
    rel = path.lstrip("/")
    if entry.path == rel and entry.mtime == 0:
        return entry
    return LayerEntry(
        rel, entry.content, entry.kind, entry.linkname, entry.mode, entry.uid, entry.gid, 0,
        entry.devmajor, entry.devminor,
    )  # fmt: skip


def layer_order(entries: Mapping[str, LayerEntry]) -> list[LayerEntry]:
    """Entries in path order (parents before children)."""
    return [entries[p] for p in sorted(entries, key=lambda p: p.split("/"))]
