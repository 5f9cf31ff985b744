"""The formats LinuxKit users boot directly: ``kernel+initrd``, ``tar-kernel-initrd``, ``tar``.

The pipeline has already written the kernel, the compressed initrd (microcode cpio first
when the spec has one) and, for ``tar``, the canonical root tar; these writers only give them
their final names (hard links when possible, copies otherwise) or wrap them in a tar.

- ``kernel+initrd``: ``NAME-kernel``, ``NAME-initrd.img``, ``NAME-cmdline``
- ``tar-kernel-initrd``: ``NAME-initrd.tar`` holding ``kernel``, ``initrd.img``, ``cmdline``
- ``tar``: ``NAME.tar``, the whole root filesystem
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.builders.base import BootInputs, FormatOptions, check_cmdline
from provision.builders.tar import write_tar_files
from provision.errors import ProvisionError


def place_file(source: Path, target: Path) -> Path:
    """``target`` as a second name of ``source`` (a copy across file systems)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


@dataclass(frozen=True)
class KernelInitrdWriter:
    name: str = "kernel+initrd"
    needs_initrd: bool = True
    needs_rootfs: bool = False

    def tools(self) -> Sequence[str]:
        return ()

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        cmdline = dest / f"{inputs.name}-cmdline"
        cmdline.write_text(check_cmdline(inputs.cmdline) + "\n")
        return [
            place_file(inputs.kernel, dest / f"{inputs.name}-kernel"),
            place_file(inputs.initrd, dest / f"{inputs.name}-initrd.img"),
            cmdline,
        ]


@dataclass(frozen=True)
class TarKernelInitrdWriter:
    name: str = "tar-kernel-initrd"
    needs_initrd: bool = True
    needs_rootfs: bool = False

    def tools(self) -> Sequence[str]:
        return ()

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        target = dest / f"{inputs.name}-initrd.tar"
        cmdline = (check_cmdline(inputs.cmdline) + "\n").encode()
        with open(target, "wb") as out:
            write_tar_files(
                out,
                [("kernel", inputs.kernel, 0o644), ("initrd.img", inputs.initrd, 0o644),
                 ("cmdline", cmdline, 0o644)],
                epoch=inputs.source_date_epoch,
            )
        return [target]


@dataclass(frozen=True)
class TarWriter:
    name: str = "tar"
    needs_initrd: bool = False
    needs_rootfs: bool = True

    def tools(self) -> Sequence[str]:
        return ()

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        if inputs.rootfs_tar is None:
            raise ProvisionError("the tar format needs the root filesystem tar")
        return [place_file(inputs.rootfs_tar, dest / f"{inputs.name}.tar")]


KERNEL_INITRD = KernelInitrdWriter()
TAR_KERNEL_INITRD = TarKernelInitrdWriter()
TAR = TarWriter()
