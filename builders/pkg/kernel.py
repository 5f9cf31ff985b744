"""The kernel component: a kernel package's vmlinuz as ``kernel`` and the modules a machine
needs (with everything they depend on) as ``kernel.tar``, laid out under
``lib/modules/VERSION/`` with the indexes ``depmod`` writes, as LinuxKit's kernel images are."""

from __future__ import annotations

import difflib
import posixpath
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.builders.pkg.deb import DebFile
from provision.builders.pkg.elf import ElfError, read_section
from provision.builders.pkg.recipe import KernelSpec
from provision.compress import COMPRESSED_SUFFIXES, codec_for_file_name
from provision.errors import ProvisionError
from provision.oci.imagebuild import LayerEntry, tar_layer_from_entries
from provision.runner import require_tools, run

_VMLINUZ_RE = re.compile(r"^/boot/vmlinuz-(?P<version>[^/]+)$")
_MODULE_SUFFIXES = (".ko", *(".ko" + suffix for suffix in COMPRESSED_SUFFIXES))
# Files of lib/modules/VERSION/ that the package ships and depmod reads.
_SHIPPED_INDEXES = ("modules.builtin", "modules.builtin.modinfo")


@dataclass(frozen=True)
class KernelModules:
    """What ``kernel.tar`` holds: the version, each module's path (relative to
    lib/modules/VERSION) by name, and the requested modules that are built in."""

    version: str
    modules: tuple[tuple[str, str], ...]
    builtin: tuple[str, ...]


def module_name(path: str) -> str:
    base = posixpath.basename(path)
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def read_modinfo(path: str, data: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` fields of a module file (``depends``, ``softdep``, ``alias``, ...)."""
    try:
        section = read_section(codec_for_file_name(path).decompress(data), ".modinfo")
    except (ElfError, ProvisionError) as exc:
        raise ProvisionError(f"{path}: not a readable kernel module ({exc})") from None
    fields: dict[str, list[str]] = {}
    for item in (section or b"").split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    return fields


def _dependencies(info: dict[str, list[str]]) -> list[str]:
    names = [d for value in info.get("depends", []) for d in value.split(",") if d]
    for value in info.get("softdep", []):  # "pre: a b post: c"
        names += [w for w in value.split() if not w.endswith(":")]
    return [n.replace("-", "_") for n in names]


def find_kernel_version(files: Iterable[DebFile]) -> tuple[str, DebFile]:
    found = [(m.group("version"), f) for f in files if (m := _VMLINUZ_RE.match(f.path))]
    if len(found) != 1:
        raise ProvisionError(
            f"the kernel package holds {len(found)} /boot/vmlinuz-* files, not one",
            hint="kernel.package must name a Debian kernel image (linux-image-*) or its meta "
            "package",
        )
    return found[0]


def resolve_modules(files: Sequence[DebFile], version: str, wanted: Sequence[str]) -> KernelModules:
    """The modules ``wanted`` plus their dependency closure (modinfo depends / softdep)."""
    prefix = f"/lib/modules/{version}/"
    available: dict[str, DebFile] = {}
    builtin_names: set[str] = set()
    for item in files:
        if not item.path.startswith(prefix):
            continue
        rel = item.path[len(prefix) :]
        if item.entry.kind == "file" and rel.endswith(_MODULE_SUFFIXES):
            available[module_name(rel)] = item
        elif rel == "modules.builtin":
            builtin_names = {module_name(line) for line in item.entry.content.decode().split()}
    chosen: dict[str, str] = {}
    builtin: list[str] = []
    missing: list[str] = []
    pending = list(wanted)
    while pending:
        name = pending.pop(0)
        if name in chosen or name in builtin:
            continue
        module = available.get(name)
        if module is None:
            if name in builtin_names:
                builtin.append(name)
            elif name in wanted:
                missing.append(name)
            continue  # a soft dependency the kernel does not ship
        chosen[name] = module.path[len(prefix) :]
        pending += _dependencies(read_modinfo(module.path, module.entry.content))
    if missing:
        hints = {m: difflib.get_close_matches(m, list(available), n=3) for m in missing}
        raise ProvisionError(
            f"kernel {version} has no module " + ", ".join(missing),
            hint="; ".join(f"{m}: did you mean {', '.join(h)}?" for m, h in hints.items() if h)
            or "list them: dpkg-deb -c the kernel's .deb | grep .ko",
        )
    return KernelModules(version, tuple(sorted(chosen.items())), tuple(sorted(builtin)))


def _tree_entries(root: Path) -> list[LayerEntry]:
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            entries.append(LayerEntry.dir(rel))
        else:
            entries.append(LayerEntry.file(rel, path.read_bytes()))
    return entries


def write_modules_tar(files: Sequence[DebFile], chosen: KernelModules) -> bytes:
    """``kernel.tar``: the chosen modules, ``modules.order`` (of those), the shipped
    ``modules.builtin*`` and what ``depmod -b ROOT VERSION`` writes, reproducibly."""
    require_tools(["depmod"])
    version = chosen.version
    prefix = f"/lib/modules/{version}/"
    by_path = {f.path: f for f in files}
    keep = {rel for _name, rel in chosen.modules}
    with tempfile.TemporaryDirectory(prefix="provision-kmod.") as tmp:
        root = Path(tmp)
        moddir = root / "lib" / "modules" / version
        moddir.mkdir(parents=True)
        for rel in sorted(keep):
            target = moddir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(by_path[prefix + rel].entry.content)
        order_file = by_path.get(prefix + "modules.order")
        lines = order_file.entry.content.decode().splitlines() if order_file else []
        ordered = [line for line in lines if line in keep]
        ordered += sorted(keep - set(ordered))
        (moddir / "modules.order").write_text("".join(f"{line}\n" for line in ordered))
        for name in _SHIPPED_INDEXES:
            shipped = by_path.get(prefix + name)
            if shipped is not None:
                (moddir / name).write_bytes(shipped.entry.content)
        run(["depmod", "-b", str(root), version])
        return tar_layer_from_entries(_tree_entries(root))


def assemble_kernel(
    files: Sequence[DebFile], spec: KernelSpec
) -> tuple[list[LayerEntry], KernelModules]:
    """The kernel image's two files: ``spec.binary`` (vmlinuz) and ``spec.tar``."""
    version, vmlinuz = find_kernel_version(files)
    chosen = resolve_modules(files, version, spec.modules)
    tar = write_modules_tar(files, chosen)
    return [
        LayerEntry.file(spec.binary, vmlinuz.entry.content, 0o644),
        LayerEntry.file(spec.tar, tar, 0o644),
    ], chosen
