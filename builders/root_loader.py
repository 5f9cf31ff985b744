"""The small initrd that boots ``kernel+squashfs`` / ``kernel+erofs``: it mounts the read-only
root image and hands over to the image's own init.

Kernels such as Debian's build virtio, squashfs, erofs and overlayfs as modules, so the kernel
alone cannot mount a root image. The loader is made from the image itself: ``/bin/busybox``
of the root and the modules it needs (``virtio_pci``, ``virtio_blk``, the filesystem,
``overlay``, with their dependencies from ``modules.dep``); a kernel with those built in just
finds no module to load. Its ``/init``:

1. mounts proc, sysfs, devtmpfs and loads the modules (dependencies first);
2. waits for the root device (``root=`` on the command line, default ``/dev/vda``: the
   virtio disk ``provision run qemu`` attaches) and mounts it read-only (``rootfstype=``,
   default the image's filesystem);
3. puts a tmpfs overlay on top (a copy into a tmpfs when overlayfs is missing), so the
   machine's root is writable and not the initial ramfs (runc cannot ``pivot_root`` out
   of that);
4. moves /dev, /proc, /sys across and ``switch_root``s to ``/sbin/init``.

Reproducible: members in a fixed order with mtimes clamped to SOURCE_DATE_EPOCH, gzip with
mtime 0.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path

from provision.builders.cpio import TRAILER, cpio_entry_header
from provision.compress import GZIP, codec_for_file_name
from provision.errors import ProvisionError, UsageError

BUSYBOX = "bin/busybox"
ROOT_DEVICE = "/dev/vda"
LOADER_MODULES = ("virtio_pci", "virtio_blk", "overlay")

INIT = """#!/bin/busybox sh
# provision root loader (kernel+{fs}): mount the root image, overlay a tmpfs, switch_root.
/bin/busybox mkdir -p /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin
PATH=/bin
export PATH
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev 2>/dev/null
log() {{ echo "provision-loader: $*" >/dev/console; }}
fail() {{ log "$*"; sleep 5; poweroff -f; }}
root={root} fstype={fs}
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	root=/dev/*) root="${{arg#root=}}" ;;
	rootfstype=*) fstype="${{arg#rootfstype=}}" ;;
	esac
done
for module in {modules}; do
	insmod "/lib/modules/$module.ko" 2>/dev/null || log "loading $module failed"
done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t "$fstype" -o ro "$root" /lower || fail "cannot mount $root ($fstype)"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
if ! mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /newroot 2>/dev/null; then
	log "no overlayfs: copying the root into a tmpfs"
	mount -t tmpfs -o mode=0755 root /newroot
	cp -a /lower/. /newroot/ || fail "copying the root failed"
fi
log "root $root ($fstype) mounted, switching root"
mkdir -p /newroot/proc /newroot/sys /newroot/dev
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root -c /dev/console /newroot /sbin/init
"""


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """``modules.dep`` as {module name: (path, [dependency paths])}; names use ``_``."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if sep:
            table[module_name(path)] = (path.strip(), deps.split())
    return table


def module_name(path: str) -> str:
    """``kernel/fs/squashfs/squashfs.ko`` -> ``squashfs`` (``-`` and ``_`` are the same)."""
    base = path.strip().rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def plan_module_order(table: dict[str, tuple[str, list[str]]], wanted: Sequence[str]) -> list[str]:
    """Paths of ``wanted`` modules present in ``table`` and of their dependencies, each after
    everything it depends on. Modules the table lacks are built in (or absent): skipped."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in table:
            return
        seen.add(name)
        path, deps = table[name]
        for dep in deps:
            visit(module_name(dep))
        order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def _modules_dir(members: dict[str, tarfile.TarInfo]) -> str | None:
    """``lib/modules/VERSION`` of the root tar (the one with a modules.dep), if any."""
    dirs = sorted(
        name.removesuffix("/modules.dep")
        for name in members
        if name.startswith("lib/modules/")
        and name.endswith("/modules.dep")
        and name.count("/") == 3
    )
    return dirs[-1] if dirs else None


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(info)
    if handle is None:
        raise UsageError(f"{info.name} in the root filesystem is not a regular file")
    with handle:
        return handle.read()


def _regular(members: dict[str, tarfile.TarInfo], name: str) -> tarfile.TarInfo | None:
    """The regular file ``name``, following symlinks inside the tar (a few levels)."""
    for _ in range(8):
        info = members.get(name)
        if info is None:
            return None
        if info.isfile():
            return info
        if not info.issym():
            return None
        target = info.linkname
        base = name.rsplit("/", 1)[0] if "/" in name else ""
        name = target.lstrip("/") if target.startswith("/") else f"{base}/{target}".lstrip("/")
        parts: list[str] = []
        for part in name.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        name = "/".join(parts)
    return None


def assemble_loader_members(rootfs_tar: Path, filesystem: str) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of the loader initrd, from the root tar; directories first."""
    with tarfile.open(rootfs_tar) as tar:
        members = {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}
        busybox = _regular(members, BUSYBOX)
        if busybox is None:
            raise UsageError(
                f"kernel+{filesystem} needs /bin/busybox in the root filesystem to mount it at boot",
                hint="use provision's init image (provision/init), which carries busybox",
            )
        files: list[tuple[str, int, bytes]] = [("bin/busybox", 0o100755, _read(tar, busybox))]
        names: list[str] = []
        moddir = _modules_dir(members)
        if moddir is not None:
            table = parse_modules_dep(_read(tar, members[f"{moddir}/modules.dep"]).decode())
            wanted = [LOADER_MODULES[0], LOADER_MODULES[1], filesystem, *LOADER_MODULES[2:]]
            for path in plan_module_order(table, wanted):
                info = _regular(members, f"{moddir}/{path}")
                if info is None:
                    raise UsageError(f"modules.dep names {path}, which the root filesystem lacks")
                try:  # busybox insmod takes plain .ko files: decompress .ko.xz/.zst/.gz here
                    module = codec_for_file_name(path).decompress(_read(tar, info))
                except ProvisionError as exc:
                    raise UsageError(f"kernel+{filesystem}: module {path}: {exc}") from None
                names.append(module_name(path))
                files.append((f"lib/modules/{module_name(path)}.ko", 0o100644, module))
    init = INIT.format(fs=filesystem, root=ROOT_DEVICE, modules=" ".join(names))
    dirs = [
        (d, 0o40755, b"")
        for d in ("bin", "dev", "lib", "lib/modules", "lower", "newroot", "proc", "rw", "sys")
    ]
    return [*dirs, ("init", 0o100755, init.encode()), *files]


def write_root_loader(rootfs_tar: Path, filesystem: str, out: Path, epoch: int) -> Path:
    """Write the loader initrd (gzip newc cpio) of a ``kernel+FILESYSTEM`` image to ``out``."""
    members = sorted(assemble_loader_members(rootfs_tar, filesystem))
    raw = bytearray()
    mtime = max(epoch, 0)
    for ino, (name, mode, data) in enumerate(members, start=1):
        raw += cpio_entry_header(
            name.encode(), ino, mode, 0, 0, 2 if mode & 0o40000 else 1, mtime, len(data)
        )
        raw += data + b"\0" * (-len(data) % 4)
        if name == "dev":  # the kernel opens /dev/console before /init runs
            raw += cpio_entry_header(
                b"dev/console", len(members) + 1, 0o20600, 0, 0, 1, mtime, 0, (5, 1)
            )
    raw += cpio_entry_header(TRAILER.encode(), 0, 0, 0, 0, 1, 0, 0)
    out.write_bytes(GZIP.compress(bytes(raw), 6))
    return out
