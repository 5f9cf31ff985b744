"""Find out how to boot what ``provision build`` wrote.

Accepted forms of an artifact argument:
- a build output prefix: ``out/web`` for ``out/web-kernel`` + ``out/web-initrd.img`` (+ the
  optional ``out/web-cmdline``), or for exactly one ``out/web.<iso|raw|img|qcow2|vhd|vmdk>``;
- one of those files itself (``out/web-kernel`` stands for the whole kernel+initrd triple);
- a ``*.manifest.json`` written by the build, or a directory holding exactly one (or holding
  exactly one kernel+initrd pair).
Kernel+initrd boots directly (``-kernel``), an ISO as a CD-ROM, any disk image as a virtio
disk. EFI firmware is used when asked or when the artifact says EFI (its format or name).
When ``provision.builders.formats`` offers ``boot_method(format)``, its answer wins over the
file-extension inference.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from provision.errors import UsageError


class BootKind(StrEnum):
    KERNEL = "kernel"
    CDROM = "cdrom"
    DISK = "disk"


@dataclass(frozen=True)
class BootSource:
    """One resolved artifact: what QEMU is given and how."""

    kind: BootKind
    path: Path
    initrd: Path | None = None
    cmdline: str = ""
    disk_format: str | None = None
    efi: bool = False
    label: str = ""
    root_image: Path | None = None  # kernel+squashfs / kernel+erofs: the root, a virtio disk


# File extension -> (kind, qemu block driver).
EXTENSIONS: dict[str, tuple[BootKind, str | None]] = {
    ".iso": (BootKind.CDROM, "raw"),
    ".raw": (BootKind.DISK, "raw"),
    ".img": (BootKind.DISK, "raw"),
    ".qcow2": (BootKind.DISK, "qcow2"),
    ".vhd": (BootKind.DISK, "vpc"),
    ".vpc": (BootKind.DISK, "vpc"),
    ".vmdk": (BootKind.DISK, "vmdk"),
}
KERNEL_SUFFIX = "-kernel"
INITRD_SUFFIX = "-initrd.img"
CMDLINE_SUFFIX = "-cmdline"
MANIFEST_SUFFIX = ".manifest.json"
ROOT_IMAGE_SUFFIXES = ("-squashfs.img", "-erofs.img")
UNBOOTABLE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".gz", ".xz", ".zst")


def _not_found(path: Path, detail: str = "") -> UsageError:
    return UsageError(
        f"artifact not found: {path}" + (f" ({detail})" if detail else ""),
        hint="give what `provision build` wrote: a prefix like out/web (for out/web-kernel and "
        "out/web-initrd.img), an .iso/.raw/.qcow2/.vhd/.vmdk file, or a *.manifest.json",
    )


def _label_of(path: Path) -> str:
    name = path.name
    for suffix in (
        KERNEL_SUFFIX,
        INITRD_SUFFIX,
        MANIFEST_SUFFIX,
        *ROOT_IMAGE_SUFFIXES,
        *EXTENSIONS,
    ):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _says_efi(*words: str) -> bool:
    return any("efi" in word.lower() for word in words if word)


def _formats_module() -> Any:
    try:
        return importlib.import_module("provision.builders.formats")
    except Exception:  # noqa: BLE001 - not there (yet), or broken: infer from file names
        return None


def format_from_name(path: Path) -> str:
    """The output format whose file name ``path`` has (longest matching extension), or ""."""
    formats = _formats_module()
    if formats is None:
        return ""
    try:
        matches = [
            (len(fmt.extension()), str(fmt.value))
            for fmt in formats.OutputFormat
            if path.name.endswith(fmt.extension()) and len(path.name) > len(fmt.extension())
        ]
    except Exception:  # noqa: BLE001
        return ""
    return max(matches)[1] if matches else ""


def _boot_method_from_formats(fmt: str) -> tuple[BootKind | None, bool | None, str | None]:
    """Ask provision.builders.formats (when it exists) how ``fmt`` boots."""
    formats = _formats_module()
    if formats is None or not fmt:
        return None, None, None
    try:
        method: Any = formats.boot_method(fmt)
    except Exception:  # noqa: BLE001 - unknown format: fall back to inference
        return None, None, None
    kind_text = str(getattr(method, "kind", "") or "").lower()
    kind = None
    if "kernel" in kind_text:
        kind = BootKind.KERNEL
    elif "iso" in kind_text or "cd" in kind_text:
        kind = BootKind.CDROM
    elif "disk" in kind_text:
        kind = BootKind.DISK
    firmware = str(getattr(method, "firmware", "") or "")
    disk_format = getattr(method, "disk_format", None)
    return (
        kind,
        _says_efi(firmware) if firmware else None,
        str(disk_format.value if hasattr(disk_format, "value") else disk_format)
        if disk_format
        else None,
    )


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


def _file_source(path: Path, fmt: str = "") -> BootSource:
    if path.name.lower().endswith(UNBOOTABLE_SUFFIXES):
        raise UsageError(
            f"{path} is an archive, which QEMU cannot boot as it is",
            hint="unpack it (a gcp tarball holds disk.raw), or build kernel+initrd, iso or raw",
        )
    prefix = _kernel_prefix(path)
    fmt = fmt or format_from_name(path)
    if prefix is not None and Path(f"{prefix}{KERNEL_SUFFIX}").is_file():
        root = path if path.name.endswith(ROOT_IMAGE_SUFFIXES) else None
        return _kernel_source(prefix, _says_efi(fmt), root)
    kind, disk_format = EXTENSIONS.get(path.suffix.lower(), (BootKind.DISK, "raw"))
    efi = _says_efi(fmt, _label_of(path))
    asked_kind, asked_efi, asked_format = _boot_method_from_formats(fmt)
    kind = asked_kind if asked_kind in (BootKind.CDROM, BootKind.DISK) else kind
    efi = efi if asked_efi is None else asked_efi
    disk_format = asked_format or disk_format
    return BootSource(kind, path, None, "", disk_format, efi, _label_of(path))


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
    for fmt, path in existing:
        if path.name.endswith(KERNEL_SUFFIX):
            return _kernel_source(Path(str(path)[: -len(KERNEL_SUFFIX)]), _says_efi(fmt))
    for fmt, path in existing:
        if path.suffix.lower() in EXTENSIONS and not path.name.endswith(INITRD_SUFFIX):
            return _file_source(path, fmt)
    raise UsageError(
        f"build manifest {manifest} lists no bootable output that exists",
        hint="rebuild with `provision build`, or pass the output file itself",
    )


def _image_suffixes() -> list[str]:
    """What may follow a build prefix in a bootable image's file name (``.iso``, ``-efi.img``...)."""
    variants = ("", "-bios", "-efi", "-efi-initrd", "-dynamic")
    suffixes = dict.fromkeys(f"{variant}{ext}" for variant in variants for ext in EXTENSIONS)
    formats = _formats_module()
    if formats is not None:
        try:
            for fmt in formats.OutputFormat:
                ext = str(fmt.extension())
                if not ext.lower().endswith(UNBOOTABLE_SUFFIXES) and ext not in (
                    INITRD_SUFFIX,
                    *ROOT_IMAGE_SUFFIXES,
                ):
                    suffixes[ext] = None
        except Exception:  # noqa: BLE001
            pass
    return sorted(suffixes)


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
    images = [Path(f"{path}{ext}") for ext in _image_suffixes() if Path(f"{path}{ext}").is_file()]
    if len(images) == 1:
        return _file_source(images[0])
    if len(images) > 1:
        raise UsageError(
            f"{path} names several artifacts: {', '.join(p.name for p in images)}",
            hint="name the file to boot",
        )
    raise _not_found(path)
