"""Find out how to boot what ``provision build`` wrote.

Accepted forms of an artifact argument:
- a build output prefix: ``out/web`` for ``out/web-kernel`` + ``out/web-initrd.img`` (+ the
  optional ``out/web-cmdline``), or for exactly one bootable output file ``out/web<extension>``;
- one of those files itself (``out/web-kernel`` stands for the whole kernel+initrd triple);
- a ``*.manifest.json`` written by the build, or a directory holding exactly one (or holding
  exactly one kernel+initrd pair).
What a file is and how it boots comes from the format registry (builders/formats.py): each
format declares its file names and its :class:`BootMethod` (direct kernel, CD-ROM or disk,
the QEMU block driver, the firmware, the archive members to unpack first). Kernel+initrd boots
directly (``-kernel``), an ISO as a CD-ROM, any disk image as a virtio disk; the archives
``tar-kernel-initrd`` and ``gcp`` are unpacked into the VM's state directory first
(:func:`unpack_source`). A file no format names boots as a raw disk (EFI when its name says so).
"""

from __future__ import annotations

import json
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from provision.builders.base import BootMethod, FormatWriter
from provision.builders.formats import FORMATS, WRITERS
from provision.builders.kernel_initrd import KERNEL_INITRD_FILES
from provision.compress import COMPRESSED_SUFFIXES
from provision.errors import UsageError
from provision.runner import run


class BootKind(StrEnum):
    KERNEL = "kernel"
    CDROM = "cdrom"
    DISK = "disk"


@dataclass(frozen=True)
class BootSource:
    """One resolved artifact: what QEMU is given and how. ``unpack``: ``path`` is an archive
    whose members these are (kernel, initrd, cmdline; or the disk): :func:`unpack_source`
    turns it into a source QEMU can boot."""

    kind: BootKind
    path: Path
    initrd: Path | None = None
    cmdline: str = ""
    disk_format: str | None = None
    efi: bool = False
    label: str = ""
    root_image: Path | None = None  # kernel+squashfs / kernel+erofs: the root, a virtio disk
    unpack: tuple[str, ...] = ()


def _boots_from_one_file(writer: FormatWriter) -> bool:
    """An ISO, a disk, or an archive of the boot files (not a kernel+initrd file set)."""
    return writer.boot is not None and (writer.boot.kind != "kernel" or bool(writer.boot.unpack))


KERNEL_SUFFIX, INITRD_SUFFIX, CMDLINE_SUFFIX = KERNEL_INITRD_FILES
MANIFEST_SUFFIX = ".manifest.json"
ROOT_IMAGE_SUFFIXES = tuple(w.extension for w in WRITERS if w.boot is not None and w.boot.root_disk)
# The main file of every format that boots from one file: ``.iso``, ``-efi.img``, ``.raw``...
IMAGE_SUFFIXES = tuple(w.extension for w in WRITERS if _boots_from_one_file(w))
# File suffix -> (kind, qemu block driver), for files no format names (extra disks, user disks).
EXTENSIONS: dict[str, tuple[BootKind, str | None]] = {
    "." + w.extension.rsplit(".", 1)[-1]: (BootKind(w.boot.kind), w.boot.disk_format)
    for w in WRITERS
    if w.boot is not None and w.boot.kind != "kernel" and not w.boot.unpack
}
EXTENSIONS[".vpc"] = (BootKind.DISK, "vpc")  # the other usual name of a VHD file
ARCHIVE_SUFFIXES = (".tar", ".tgz", *COMPRESSED_SUFFIXES)  # tarballs and compressed files
_ALL_SUFFIXES = sorted(
    {s for w in WRITERS for s in w.files} | {MANIFEST_SUFFIX}, key=len, reverse=True
)


def _not_found(path: Path, detail: str = "") -> UsageError:
    return UsageError(
        f"artifact not found: {path}" + (f" ({detail})" if detail else ""),
        hint="give what `provision build` wrote: a prefix like out/web (for out/web-kernel and "
        "out/web-initrd.img), an .iso/.raw/.qcow2/.vhd/.vmdk file, or a *.manifest.json",
    )


def _label_of(path: Path) -> str:
    name = path.name
    for suffix in _ALL_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    for suffix in EXTENSIONS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _says_efi(*words: str) -> bool:
    return any("efi" in word.lower() for word in words if word)


def format_from_name(path: Path) -> FormatWriter | None:
    """The format whose main file name ``path`` has (the longest matching extension)."""
    matches = [
        (len(w.extension), index)
        for index, w in enumerate(WRITERS)
        if path.name.endswith(w.extension) and len(path.name) > len(w.extension)
    ]
    return WRITERS[max(matches)[1]] if matches else None


def _kernel_prefix(path: Path) -> Path | None:
    """``out/web`` when ``path`` is one file of a kernel output set, else None."""
    for suffix in (KERNEL_SUFFIX, INITRD_SUFFIX, CMDLINE_SUFFIX, *ROOT_IMAGE_SUFFIXES):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return Path(str(path)[: -len(suffix)])
    return None


def _kernel_source(prefix: Path, efi: bool, root: Path | None = None) -> BootSource:
    """NAME-kernel with NAME-initrd.img and/or a root image (NAME-squashfs.img, -erofs.img;
    ``root`` when the user named it). A root image boots with its loader initrd
    (NAME-squashfs-initrd.img) when named, or when there is no NAME-initrd.img."""
    kernel = Path(f"{prefix}{KERNEL_SUFFIX}")
    if not kernel.is_file():
        raise _not_found(kernel)
    initrd = Path(f"{prefix}{INITRD_SUFFIX}")
    roots = [Path(f"{prefix}{s}") for s in ROOT_IMAGE_SUFFIXES if Path(f"{prefix}{s}").is_file()]
    if root is not None:
        roots = [root]
    loader = Path(str(roots[0]).removesuffix(".img") + INITRD_SUFFIX) if roots else None
    if loader is not None and loader.is_file() and (root is not None or not initrd.is_file()):
        initrd = loader
    if not initrd.is_file() and not roots:
        raise _not_found(initrd, f"the initrd (or root image) that goes with {kernel.name}")
    cmdline_file = Path(f"{prefix}{CMDLINE_SUFFIX}")
    cmdline = cmdline_file.read_text().strip() if cmdline_file.is_file() else ""
    return BootSource(
        BootKind.KERNEL,
        kernel,
        initrd if initrd.is_file() else None,
        cmdline,
        None,
        efi,
        prefix.name,
        roots[0] if roots else None,
    )


def _read_packed_cmdline(archive: Path, members: tuple[str, ...]) -> str:
    """The command line of a tar-kernel-initrd archive (members: kernel, initrd, cmdline),
    after checking it holds all three as regular files."""
    try:
        with tarfile.open(archive) as tar:
            files = {m.name for m in tar.getmembers() if m.isreg()}
            missing = [m for m in members if m not in files]
            if missing:
                raise UsageError(
                    f"{archive} holds no {', '.join(missing)}",
                    hint="a tar-kernel-initrd archive holds " + ", ".join(members),
                )
            _kernel, _initrd, cmdline = members
            handle = tar.extractfile(cmdline)
            return handle.read().decode(errors="replace").strip() if handle is not None else ""
    except (OSError, tarfile.TarError) as exc:
        raise UsageError(f"cannot read {archive} as a tar archive: {exc}") from exc


def _packed_source(path: Path, method: BootMethod) -> BootSource:
    kind = BootKind(method.kind)
    cmdline = _read_packed_cmdline(path, method.unpack) if kind is BootKind.KERNEL else ""
    disk_format = method.disk_format if kind is BootKind.DISK else None
    return BootSource(
        kind,
        path,
        None,
        cmdline,
        disk_format,
        method.firmware == "efi",
        _label_of(path),
        unpack=method.unpack,
    )


def unpack_source(source: BootSource, directory: Path) -> BootSource:
    """``source`` with the boot members of its archive unpacked into ``directory`` (the VM's
    state directory; holes of a sparse disk stay holes); a source that is no archive as it is."""
    if not source.unpack:
        return source
    run(["tar", "-x", "--no-same-owner", "-f", source.path, "-C", directory, *source.unpack])
    members = [directory / member for member in source.unpack]
    if source.kind is BootKind.KERNEL:
        return replace(source, path=members[0], initrd=members[1], unpack=())
    return replace(source, path=members[0], unpack=())


def _file_source(path: Path, fmt: str = "") -> BootSource:
    writer = FORMATS.get(fmt) if fmt else format_from_name(path)
    prefix = _kernel_prefix(path)
    if prefix is not None and Path(f"{prefix}{KERNEL_SUFFIX}").is_file():
        root = path if path.name.endswith(ROOT_IMAGE_SUFFIXES) else None
        return _kernel_source(prefix, False, root)
    if writer is not None and writer.boot is None:
        raise UsageError(
            f"{path} is {writer.name} output, which does not boot",
            hint="build kernel+initrd, an iso or a disk format (provision build --help)",
        )
    if writer is not None and writer.boot is not None and writer.boot.unpack:
        return _packed_source(path, writer.boot)
    if writer is not None and writer.boot is not None and writer.boot.kind != "kernel":
        method = writer.boot
        return BootSource(
            BootKind(method.kind),
            path,
            None,
            "",
            method.disk_format,
            method.firmware == "efi",
            _label_of(path),
        )
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise UsageError(
            f"{path} is an archive, which QEMU cannot boot as it is",
            hint="unpack it, or build kernel+initrd, an iso or a disk format",
        )
    if prefix is not None:  # one file of a kernel output set whose kernel is missing
        return _kernel_source(prefix, False)
    kind, disk_format = EXTENSIONS.get(path.suffix.lower(), (BootKind.DISK, "raw"))
    return BootSource(kind, path, None, "", disk_format, _says_efi(path.name), _label_of(path))


def _manifest_entries(value: Any, fmt: str = "") -> Iterator[tuple[str, str]]:
    """(format, file name) pairs anywhere in a manifest's JSON."""
    if isinstance(value, dict):
        own = value.get("format") or value.get("type") or fmt
        own = str(own) if isinstance(own, str) else fmt
        for key in ("path", "file", "filename", "name"):
            if isinstance(value.get(key), str):
                yield own, value[key]
        for key, child in value.items():
            if isinstance(child, dict | list):
                yield from _manifest_entries(child, own if own else str(key))
    elif isinstance(value, list):
        for child in value:
            yield from _manifest_entries(child, fmt)


def resolve_manifest(manifest: Path) -> BootSource:
    """Pick the bootable output a build manifest lists (kernel+initrd first)."""
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read build manifest {manifest}: {exc}") from exc
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if isinstance(outputs, list) and outputs:
        # provision.manifest: outputs = [{"file": "web-kernel", "format": "kernel+initrd"}, ...]
        entries = list(_manifest_entries(outputs))
    else:
        entries = list(_manifest_entries(data))
    existing = [
        (fmt, manifest.parent / name)
        for fmt, name in entries
        if name and (manifest.parent / name).is_file()
    ]
    for _fmt, path in existing:
        if path.name.endswith(KERNEL_SUFFIX):
            return _kernel_source(Path(str(path)[: -len(KERNEL_SUFFIX)]), False)
    for fmt, path in existing:
        writer = FORMATS.get(fmt)
        if writer is not None and _boots_from_one_file(writer):
            return _file_source(path, fmt)
        if writer is None and path.suffix.lower() in EXTENSIONS:
            return _file_source(path)
    raise UsageError(
        f"build manifest {manifest} lists no bootable output that exists",
        hint="rebuild with `provision build`, or pass the output file itself",
    )


def _resolve_directory(directory: Path) -> BootSource:
    manifests = sorted(directory.glob(f"*{MANIFEST_SUFFIX}"))
    if len(manifests) == 1:
        return resolve_manifest(manifests[0])
    kernels = sorted(directory.glob(f"*{KERNEL_SUFFIX}"))
    if len(manifests) == 0 and len(kernels) == 1:
        return _kernel_source(Path(str(kernels[0])[: -len(KERNEL_SUFFIX)]), False)
    candidates = [p.name for p in (manifests or kernels)]
    if not candidates:
        raise _not_found(directory, "no build manifest or kernel in this directory")
    raise UsageError(
        f"{directory} holds several artifacts: {', '.join(candidates)}",
        hint="name one of them (or its prefix) instead of the directory",
    )


def resolve_artifact(path: Path) -> BootSource:
    """Turn the user's artifact argument into a BootSource, or raise UsageError (exit 2)."""
    if path.is_dir():
        return _resolve_directory(path)
    if path.is_file():
        if path.name.endswith(MANIFEST_SUFFIX):
            return resolve_manifest(path)
        return _file_source(path)
    if Path(f"{path}{KERNEL_SUFFIX}").is_file():
        return _kernel_source(path, False)
    manifest = Path(f"{path}{MANIFEST_SUFFIX}")
    if manifest.is_file():
        return resolve_manifest(manifest)
    images = [Path(f"{path}{ext}") for ext in IMAGE_SUFFIXES if Path(f"{path}{ext}").is_file()]
    if len(images) == 1:
        return _file_source(images[0])
    if len(images) > 1:
        raise UsageError(
            f"{path} names several artifacts: {', '.join(p.name for p in images)}",
            hint="name the file to boot",
        )
    raise _not_found(path)


# (offset, bytes) one of which a bootable image of each QEMU block driver starts with; a
# negative offset counts from the end (a fixed VHD's footer).
_SIGNATURES: dict[tuple[BootKind, str | None], tuple[tuple[int, bytes], ...]] = {
    (BootKind.CDROM, "raw"): ((0x8001, b"CD001"),),
    (BootKind.DISK, "raw"): ((510, b"\x55\xaa"),),  # an MBR, or GPT's protective MBR
    (BootKind.DISK, "qcow2"): ((0, b"QFI\xfb"),),
    (BootKind.DISK, "vpc"): ((0, b"conectix"), (-512, b"conectix")),
    (BootKind.DISK, "vmdk"): ((0, b"KDMV"), (0, b"# Disk DescriptorFile")),
}


def check_bootable(source: BootSource) -> None:
    """Refuse, before QEMU starts, files that cannot boot: not regular files (a FIFO, a
    device), empty files, and disks or ISOs without their format's signature (QEMU would
    otherwise sit in its firmware's boot loop forever)."""
    files = [source.path, *(p for p in (source.initrd, source.root_image) if p is not None)]
    for path in files:
        try:
            info = path.stat()
        except OSError as exc:
            raise _not_found(path, exc.strerror or "") from exc
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(
                f"{path} is not a regular file", hint="give a file that `provision build` wrote"
            )
        if info.st_size == 0:
            raise UsageError(f"{path} is empty", hint="give a file that `provision build` wrote")
    signatures = _SIGNATURES.get((source.kind, source.disk_format))
    if not signatures or source.unpack:  # an archive: what QEMU boots is unpacked from it later
        return
    size = source.path.stat().st_size
    with open(source.path, "rb") as handle:
        for offset, magic in signatures:
            start = offset if offset >= 0 else size + offset
            if start < 0 or start + len(magic) > size:
                continue
            handle.seek(start)
            if handle.read(len(magic)) == magic:
                return
    raise UsageError(
        f"{source.path} is not a bootable {source.kind.value} image ({source.disk_format}): its signature is missing",
        hint="boot what `provision build` wrote (kernel+initrd, iso, raw, qcow2, vhd, vmdk)",
    )
