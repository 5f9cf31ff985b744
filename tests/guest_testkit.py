"""What several test folders need to boot a tiny guest of their own: the host's Debian cloud
kernel with its modules, the load order of a few modules, and a newc cpio written by hand
(independent of provision's own writer, so it can check that writer's outputs)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from provision.builders.root_loader import parse_modules_dep, plan_module_order

# (name, mode with file type, contents, (rdev major, rdev minor))
NewcEntry = tuple[str, int, bytes, tuple[int, int]]


def host_kernel() -> tuple[Path, Path] | None:
    """The newest installed cloud kernel and its modules directory (one with modules.dep)."""
    for kernel in sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"), reverse=True):
        modules = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-")
        if (modules / "modules.dep").is_file():
            return kernel, modules
    return None


def module_order(modules_dir: Path, wanted: Sequence[str]) -> list[str]:
    """Paths (relative to ``modules_dir``) of ``wanted`` and their dependencies, in load order."""
    table = parse_modules_dep((modules_dir / "modules.dep").read_text())
    return plan_module_order(table, wanted)


def _newc_entry(
    name: str, mode: int, data: bytes, rdev: tuple[int, int], ino: int, mtime: int
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
    out = b"070701" + b"".join(f"{value:08x}".encode() for value in fields) + encoded
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def newc_archive(entries: Iterable[NewcEntry], *, mtime: int = 0) -> bytes:
    """A newc cpio (owner 0, inodes numbered from 1 in name order) of ``entries``, padded to
    512 bytes."""
    blob = b"".join(
        _newc_entry(name, mode, data, rdev, ino, mtime)
        for ino, (name, mode, data, rdev) in enumerate(sorted(entries), start=1)
    )
    blob += _newc_entry("TRAILER!!!", 0, b"", (0, 0), 0, 0)
    return blob + b"\0" * (-len(blob) % 512)
