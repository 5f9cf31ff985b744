"""``kernel+squashfs`` and ``kernel+erofs``: the kernel, the canonical root filesystem as a
read-only filesystem image, the kernel command line, and the small initrd that mounts the
image at boot (builders/root_loader.py), as four files (``NAME-kernel``,
``NAME-squashfs.img`` / ``NAME-erofs.img``, ``NAME-cmdline``, ``NAME-squashfs-initrd.img`` /
``NAME-erofs-initrd.img``). The kernel and command line are those of ``kernel+initrd``, so
the formats can be built together.

The root tar is unpacked into a scratch directory with GNU tar and packed by mksquashfs /
mkfs.erofs. As an ordinary user both run inside one fakeroot session, so ownership, modes and
device nodes of the tar come through without root. Reproducible: fixed timestamps
(SOURCE_DATE_EPOCH), filesystem UUID from the digest, sorted directories, no xattrs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.assemble.root import BOOT_FILES
from provision.builders.base import (
    BootInput,
    BootInputs,
    BootMethod,
    FormatOptions,
    check_cmdline,
    derive_uuid,
    tool_env,
)
from provision.builders.root_loader import write_root_loader
from provision.runner import run


def as_root_argv(state: Path) -> list[str | Path]:
    """Prefix for commands that must see root ownership (fakeroot when not root)."""
    if os.geteuid() == 0:
        return []
    return (
        ["fakeroot", "-i", state, "-s", state, "--"]
        if state.exists()
        else ["fakeroot", "-s", state, "--"]
    )


def root_tools() -> tuple[str, ...]:
    return ("tar",) if os.geteuid() == 0 else ("tar", "fakeroot")


def write_rootfs_tree(rootfs_tar: Path, tree: Path, state: Path) -> None:
    """Unpack the root, less the boot files (kernel, command line, microcode): they are
    files of their own, and the initrd of kernel+initrd leaves them out too."""
    tree.mkdir()
    excludes = [f"--exclude={path}" for path in BOOT_FILES]
    run(
        [
            *as_root_argv(state),
            "tar",
            "--numeric-owner",
            "--anchored",
            *excludes,
            "-xpf",
            rootfs_tar,
            "-C",
            tree,
        ]
    )


def write_squashfs(tree: Path, out: Path, epoch: int, state: Path) -> None:
    run(
        [
            *as_root_argv(state),
            "mksquashfs",
            tree,
            out,
            "-noappend",
            "-no-progress",
            "-quiet",
            "-comp",
            "zstd",
            "-no-xattrs",
        ],  # SOURCE_DATE_EPOCH (set by tool_env) fixes every inode time and the mkfs time
        env=tool_env(epoch),
    )


def write_erofs(tree: Path, out: Path, epoch: int, digest: str, state: Path) -> None:
    run(
        [
            *as_root_argv(state),
            "mkfs.erofs",
            "--quiet",
            "-zlz4hc",
            "-x",
            "-1",
            f"-T{epoch}",
            f"-U{derive_uuid(digest, 'erofs')}",
            out,
            tree,
        ],
        env=tool_env(epoch),
    )


@dataclass(frozen=True)
class KernelRootfsWriter:
    """``kernel+squashfs`` / ``kernel+erofs``."""

    name: str
    filesystem: str  # "squashfs" or "erofs"
    boot: BootMethod | None = BootMethod("kernel", root_disk=True)
    needs: frozenset[BootInput] = frozenset(
        {BootInput.KERNEL, BootInput.CMDLINE, BootInput.ROOTFS_TAR}
    )

    @property
    def extension(self) -> str:
        return f"-{self.filesystem}.img"

    @property
    def files(self) -> tuple[str, ...]:
        return ("-kernel", self.extension, "-cmdline", f"-{self.filesystem}-initrd.img")

    def tools(self) -> Sequence[str]:
        return (*root_tools(), "mksquashfs" if self.filesystem == "squashfs" else "mkfs.erofs")

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        rootfs_tar = inputs.file(BootInput.ROOTFS_TAR)
        kernel, image, cmdline, loader = (dest / (inputs.name + suffix) for suffix in self.files)
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=dest) as scratch:
            tree, state = Path(scratch) / "root", Path(scratch) / "fakeroot.state"
            write_rootfs_tree(rootfs_tar, tree, state)
            if self.filesystem == "squashfs":
                write_squashfs(tree, image, inputs.source_date_epoch, state)
            else:
                write_erofs(tree, image, inputs.source_date_epoch, inputs.digest, state)
        write_root_loader(rootfs_tar, self.filesystem, loader, inputs.source_date_epoch)
        shutil.copyfile(inputs.file(BootInput.KERNEL), kernel)
        cmdline.write_text(check_cmdline(inputs.cmdline) + "\n")
        return [kernel, image, cmdline, loader]
