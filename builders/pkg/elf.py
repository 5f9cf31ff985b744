"""Just enough ELF: the interpreter and DT_NEEDED libraries of executables and shared
objects, a named section (``.modinfo`` of kernel modules), and the check that every ELF file
of an image finds what it needs inside the image."""

from __future__ import annotations

import posixpath
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from provision.oci.imagebuild import LayerEntry

ELF_MAGIC = b"\x7fELF"
ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29
MULTIARCH = {(62, 64): "x86_64-linux-gnu", (183, 64): "aarch64-linux-gnu",
             (3, 32): "i386-linux-gnu", (40, 32): "arm-linux-gnueabihf"}  # fmt: skip


class ElfError(ValueError):
    """The bytes start like ELF but do not parse."""


@dataclass(frozen=True)
class ElfInfo:
    elf_class: int  # 32 or 64
    machine: int
    type: int
    interpreter: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]

    @property
    def multiarch(self) -> str | None:
        return MULTIARCH.get((self.machine, self.elf_class))


@dataclass(frozen=True)
class _Layout:
    endian: str
    elf_class: int
    header: tuple[int, ...]

    def unpack(self, fmt: str, data: bytes, offset: int) -> tuple[int, ...]:
        try:
            return struct.unpack_from(self.endian + fmt, data, offset)
        except struct.error as exc:
            raise ElfError(str(exc)) from None


def _layout(data: bytes) -> _Layout | None:
    if len(data) < 52 or not data.startswith(ELF_MAGIC):
        return None
    elf_class = {1: 32, 2: 64}.get(data[4])
    endian = {1: "<", 2: ">"}.get(data[5])
    if elf_class is None or endian is None:
        raise ElfError("unknown ELF class or byte order")
    fmt = "HHIQQQIHHHHHH" if elf_class == 64 else "HHIIIIIHHHHHH"
    try:
        header = struct.unpack_from(endian + fmt, data, 16)
    except struct.error as exc:
        raise ElfError(str(exc)) from None
    return _Layout(endian, elf_class, header)


def _segments(layout: _Layout, data: bytes) -> list[tuple[int, int, int, int]]:
    """(type, offset, vaddr, filesz) of each program header."""
    _t, _m, _v, _e, phoff, _s, _f, _eh, phentsize, phnum, *_ = layout.header
    segments = []
    for i in range(phnum):
        at = phoff + i * phentsize
        if layout.elf_class == 64:
            p_type, _fl, off, vaddr, _pa, filesz, _mem, _al = layout.unpack("IIQQQQQQ", data, at)
        else:
            p_type, off, vaddr, _pa, filesz, _mem, _fl, _al = layout.unpack("IIIIIIII", data, at)
        segments.append((p_type, off, vaddr, filesz))
    return segments


def _cstring(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    if offset < 0 or offset >= len(data) or end < 0:
        raise ElfError("string outside the file")
    return data[offset:end].decode("utf-8", "replace")


def parse_elf(data: bytes) -> ElfInfo | None:
    """The dynamic-linking facts of an ELF file; None when ``data`` is not ELF."""
    layout = _layout(data)
    if layout is None:
        return None
    e_type, machine = layout.header[0], layout.header[1]
    segments = _segments(layout, data) if e_type in (ET_EXEC, ET_DYN) else []
    interpreter = None
    dynamic: list[tuple[int, int]] = []
    for p_type, off, _vaddr, filesz in segments:
        if p_type == PT_INTERP:
            interpreter = data[off : off + filesz].split(b"\0")[0].decode("utf-8", "replace")
        elif p_type == PT_DYNAMIC:
            size, fmt = (16, "qQ") if layout.elf_class == 64 else (8, "iI")
            for at in range(off, off + filesz, size):
                tag, value = layout.unpack(fmt, data, at)
                if tag == DT_NULL:
                    break
                dynamic.append((tag, value))
    strtab_vaddr = next((v for t, v in dynamic if t == DT_STRTAB), None)
    strings: dict[int, list[str]] = {DT_NEEDED: [], DT_RPATH: [], DT_RUNPATH: []}
    if dynamic and strtab_vaddr is not None:
        strtab = _vaddr_to_offset(segments, strtab_vaddr)
        for tag, value in dynamic:
            if tag in strings:
                strings[tag].append(_cstring(data, strtab + value))
    return ElfInfo(
        layout.elf_class, machine, e_type, interpreter, tuple(strings[DT_NEEDED]),
        _split_paths(strings[DT_RPATH]), _split_paths(strings[DT_RUNPATH]),
    )  # fmt: skip


def _split_paths(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(d for v in values for d in v.split(":") if d)


def _vaddr_to_offset(segments: Iterable[tuple[int, int, int, int]], vaddr: int) -> int:
    for p_type, off, seg_vaddr, filesz in segments:
        if p_type == PT_LOAD and seg_vaddr <= vaddr < seg_vaddr + filesz:
            return off + vaddr - seg_vaddr
    raise ElfError(f"address {vaddr:#x} is in no loaded segment")


def read_section(data: bytes, name: str) -> bytes | None:
    """The contents of section ``name`` (e.g. ``.modinfo``), or None."""
    layout = _layout(data)
    if layout is None:
        return None
    shoff = layout.header[5]
    shentsize, shnum, shstrndx = layout.header[10], layout.header[11], layout.header[12]
    fmt = "IIQQQQIIQQ" if layout.elf_class == 64 else "IIIIIIIIII"
    headers = [layout.unpack(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    if not headers or shstrndx >= len(headers):
        return None
    names_offset = headers[shstrndx][4]
    for header in headers:
        if _cstring(data, names_offset + header[0]) == name:
            return data[header[4] : header[4] + header[5]]
    return None


# ------------------------------------------------------------------ closure in an image tree
@dataclass(frozen=True)
class MissingDependency:
    file: str  # the ELF file, absolute in the image
    needs: str  # a soname, or the interpreter's path
    kind: str  # "library" or "interpreter"
    paths: tuple[str, ...] = ()  # where the loader looks for it

    def __str__(self) -> str:
        if self.kind == "interpreter":
            return f"{self.file}: its interpreter {self.needs} is not in the image"
        return f"{self.file}: needs {self.needs}, which is not in the image"


class ImageTree:
    """Path lookups inside an image's entries, symlinks resolved within the image root."""

    def __init__(self, entries: Mapping[str, LayerEntry]) -> None:
        self.entries = entries
        self.directories = {"/"}
        for path, entry in entries.items():
            if entry.kind == "dir":
                self.directories.add(path)
            parent = posixpath.dirname(path)
            while parent not in self.directories:
                self.directories.add(parent)
                parent = posixpath.dirname(parent)

    def resolve(self, path: str, max_links: int = 40) -> str | None:
        """Follow symlinks in ``path`` the way the kernel would with the image as root."""
        pending = [p for p in path.split("/") if p]
        resolved = "/"
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                resolved = posixpath.dirname(resolved)
                continue
            candidate = posixpath.join(resolved, part)
            entry = self.entries.get(candidate)
            if entry is not None and entry.kind == "symlink":
                hops += 1
                if hops > max_links:
                    return None
                target = entry.linkname
                if target.startswith("/"):
                    resolved = "/"
                pending = [p for p in target.split("/") if p] + pending
            elif entry is not None or candidate in self.directories:
                resolved = candidate
            else:
                return None
        return resolved

    def is_file(self, path: str) -> bool:
        resolved = self.resolve(path)
        entry = self.entries.get(resolved) if resolved else None
        return entry is not None and entry.kind == "file"


def library_dirs(info: ElfInfo, origin: str) -> list[str]:
    """Where the dynamic loader looks for ``info``'s libraries (no ld.so.cache in images)."""
    dirs = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
            for d in (info.rpath if not info.runpath else ()) + info.runpath]  # fmt: skip
    if info.multiarch:
        dirs += [f"/lib/{info.multiarch}", f"/usr/lib/{info.multiarch}"]
    suffix = "64" if info.elf_class == 64 else ""
    dirs += [f"/lib{suffix}", f"/usr/lib{suffix}", "/lib", "/usr/lib"]
    return list(dict.fromkeys(dirs))


def check_elf_closure(entries: Mapping[str, LayerEntry]) -> list[MissingDependency]:
    """Every ELF executable or library of ``entries`` (keyed by absolute path) whose
    interpreter or DT_NEEDED libraries the image lacks."""
    tree = ImageTree(entries)
    missing: list[MissingDependency] = []
    for path in sorted(entries):
        entry = entries[path]
        if entry.kind != "file" or not entry.content.startswith(ELF_MAGIC):
            continue
        try:
            info = parse_elf(entry.content)
        except ElfError:
            continue
        if info is None or info.type not in (ET_EXEC, ET_DYN):
            continue
        if info.interpreter and not tree.is_file(info.interpreter):
            missing.append(
                MissingDependency(path, info.interpreter, "interpreter", (info.interpreter,))
            )
        dirs = library_dirs(info, posixpath.dirname(path))
        for soname in info.needed:
            candidates = [soname] if "/" in soname else [posixpath.join(d, soname) for d in dirs]
            if not any(tree.is_file(c) for c in candidates):
                missing.append(MissingDependency(path, soname, "library", tuple(candidates)))
    return missing
