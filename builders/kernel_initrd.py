"""The formats LinuxKit users boot directly: ``kernel+initrd``, ``tar-kernel-initrd``, ``tar``.

The pipeline has already written what each declares it needs: the kernel and the compressed
initrd (microcode cpio first when the spec has one), or for ``tar`` the canonical root tar;
these writers only give them their final names (hard links when possible, copies otherwise)
or wrap them in a tar.

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

from provision.builders.base import (
    BOOT_FILES_NEEDED,
    BootInput,
    BootInputs,
    BootMethod,
    FormatOptions,
    check_cmdline,
)
from provision.builders.tar import write_tar_files


def place_file(source: Path, target: Path) -> Path:
    """``target`` as a second name of ``source`` (a copy across file systems)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


KERNEL_INITRD_FILES = ("-kernel", "-initrd.img", "-cmdline")
TAR_KERNEL_INITRD_MEMBERS = ("kernel", "initrd.img", "cmdline")


@dataclass(frozen=True)
class KernelInitrdWriter:
    name: str = "kernel+initrd"
    files: tuple[str, ...] = KERNEL_INITRD_FILES
    extension: str = "-initrd.img"
    boot: BootMethod | None = BootMethod("kernel")
    needs: frozenset[BootInput] = BOOT_FILES_NEEDED

    def tools(self) -> Sequence[str]:
        return ()

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        cmdline = dest / f"{inputs.name}-cmdline"
        cmdline.write_text(check_cmdline(inputs.cmdline) + "\n")
        return [
            place_file(inputs.file(BootInput.KERNEL), dest / f"{inputs.name}-kernel"),
            place_file(inputs.file(BootInput.INITRD), dest / f"{inputs.name}-initrd.img"),
            cmdline,
        ]


@dataclass(frozen=True)
class TarKernelInitrdWriter:
    """One tar of ``kernel``, ``initrd.img`` and ``cmdline``; QEMU boots it unpacked."""

    name: str = "tar-kernel-initrd"
    files: tuple[str, ...] = ("-initrd.tar",)
    extension: str = "-initrd.tar"
    boot: BootMethod | None = BootMethod("kernel", unpack=TAR_KERNEL_INITRD_MEMBERS)
    needs: frozenset[BootInput] = BOOT_FILES_NEEDED

    def tools(self) -> Sequence[str]:
        return ()

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        target = dest / f"{inputs.name}-initrd.tar"
        cmdline = (check_cmdline(inputs.cmdline) + "\n").encode()
        kernel_name, initrd_name, cmdline_name = TAR_KERNEL_INITRD_MEMBERS
        with open(target, "wb") as out:
            write_tar_files(
                out,
                [
                    (kernel_name, inputs.file(BootInput.KERNEL), 0o644),
                    (initrd_name, inputs.file(BootInput.INITRD), 0o644),
                    (cmdline_name, cmdline, 0o644),
                ],
                epoch=inputs.source_date_epoch,
            )
        return [target]


@dataclass(frozen=True)
class TarWriter:
    name: str = "tar"
    files: tuple[str, ...] = (".tar",)
    extension: str = ".tar"
    boot: BootMethod | None = None
    needs: frozenset[BootInput] = frozenset({BootInput.ROOTFS_TAR})

    def tools(self) -> Sequence[str]:
        return ()

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        return [place_file(inputs.file(BootInput.ROOTFS_TAR), dest / f"{inputs.name}.tar")]


KERNEL_INITRD = KernelInitrdWriter()
TAR_KERNEL_INITRD = TarKernelInitrdWriter()
TAR = TarWriter()
