"""The one registry of output formats: a table of writer objects, each declaring its own facts
(name, files, boot method, inputs; see builders/base.py). Everything else derives from it:
``parse_format``, ``provision build -f``'s help, ``boot_method``, the qemu target's artifact
detection and the table in docs/formats.md (``python3 -m provision.builders.formats``
prints it; a test checks the docs match).

A new format: a writer class declaring those facts, and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping

from provision.builders.base import BootInput, BootMethod, FormatWriter
from provision.builders.cloud import GcpWriter
from provision.builders.disk import QemuImgWriter, RawDiskWriter
from provision.builders.iso import IsoBiosWriter, IsoEfiInitrdWriter, IsoEfiWriter
from provision.builders.kernel_initrd import KERNEL_INITRD, TAR, TAR_KERNEL_INITRD
from provision.builders.rootfs_image import KernelRootfsWriter
from provision.builders.vhd import VhdWriter
from provision.builders.vmdk import VmdkWriter
from provision.errors import UsageError

WRITERS: tuple[FormatWriter, ...] = (
    KERNEL_INITRD,
    TAR_KERNEL_INITRD,
    TAR,
    KernelRootfsWriter("kernel+squashfs", "squashfs"),
    KernelRootfsWriter("kernel+erofs", "erofs"),
    IsoBiosWriter(),
    IsoEfiWriter(),
    IsoEfiInitrdWriter(),
    RawDiskWriter("raw-bios", "bios", "-bios.img"),
    RawDiskWriter("raw-efi", "efi", "-efi.img"),
    QemuImgWriter("qcow2-bios", "bios", "qcow2", ".qcow2"),
    QemuImgWriter("qcow2-efi", "efi", "qcow2", "-efi.qcow2"),
    VhdWriter("vhd", dynamic=False, extension=".vhd"),
    VhdWriter("dynamic-vhd", dynamic=True, extension="-dynamic.vhd"),
    VmdkWriter(),
    GcpWriter(),
    RawDiskWriter("aws", "hybrid", ".raw"),
)

FORMATS: Mapping[str, FormatWriter] = {writer.name: writer for writer in WRITERS}


def parse_format(name: str) -> FormatWriter:
    """The writer of the format named ``name`` (YAML / CLI spelling), or a UsageError listing
    them all."""
    try:
        return FORMATS[name]
    except KeyError:
        raise UsageError(
            f"unknown output format {name!r}", hint=f"formats: {', '.join(FORMATS)}"
        ) from None


def boot_method(name: str) -> BootMethod:
    """How a machine (``provision run qemu``) boots an artifact of format ``name``."""
    method = parse_format(name).boot
    if method is None:
        raise UsageError(f"output format {name!r} is not bootable")
    return method


def describe_boot(method: BootMethod | None) -> str:
    """A boot method in words (--help and the docs' table)."""
    if method is None:
        return "does not boot"
    firmware = " and ".join(f.upper() for f in method.firmwares)
    if method.kind == "kernel":
        text = "direct kernel boot" + (", root image as a virtio disk" if method.root_disk else "")
    elif method.kind == "cdrom":
        text = f"CD-ROM, {firmware}"
    else:
        text = f"{method.disk_format} disk, {firmware}"
    if method.unpack:
        text = f"unpack {', '.join(method.unpack)}, then {text}"
    return text


_INPUT_ORDER = (BootInput.KERNEL, BootInput.INITRD, BootInput.CMDLINE, BootInput.ROOTFS_TAR)


def render_format_table(writers: tuple[FormatWriter, ...] = WRITERS) -> str:
    """The markdown table of docs/formats.md."""
    lines = [
        "| format | files (`NAME` = `--name`) | boots (`provision run qemu FILE`) | built from |",
        "|---|---|---|---|",
    ]
    for writer in writers:
        files = ", ".join(f"`NAME{suffix}`" for suffix in writer.files)
        needs = ", ".join(str(what) for what in _INPUT_ORDER if what in writer.needs)
        lines.append(f"| `{writer.name}` | {files} | {describe_boot(writer.boot)} | {needs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_format_table(), end="")
