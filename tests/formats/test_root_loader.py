"""The loader initrd of kernel+squashfs / kernel+erofs: made from the root's busybox and the
modules the root ships, loaded dependencies first (booting it is tests/formats/test_formats_agent.py)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from provision.builders.root_loader import parse_modules_dep, plan_module_order, write_root_loader
from provision.compress import GZIP, NONE, XZ, ZSTD, Codec
from provision.errors import UsageError

DEP = """\
kernel/fs/squashfs/squashfs.ko:
kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio_pci-legacy_dev.ko
kernel/drivers/virtio/virtio_pci-legacy_dev.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko
"""
MODDIR = "lib/modules/6.1.0-test"


def write_root(
    dest: Path, *, modules: bool = True, busybox: bool = True, codec: Codec = NONE
) -> Path:
    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(dest, "w") as tar:
        if busybox:
            add(tar, "bin/busybox", b"BUSYBOX")
        if modules:
            dep = DEP.replace(".ko", ".ko" + codec.suffix)  # as depmod names compressed modules
            add(tar, f"{MODDIR}/modules.dep", dep.encode())
            for line in DEP.splitlines():
                path = line.split(":")[0]
                add(
                    tar, f"{MODDIR}/{path}{codec.suffix}", codec.compress(f"MODULE {path}".encode())
                )
    return dest


def read_newc(path: Path) -> dict[str, tuple[int, bytes]]:
    raw, pos = gzip.decompress(path.read_bytes()), 0
    out: dict[str, tuple[int, bytes]] = {}
    while True:
        fields = [int(raw[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = raw[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, raw[pos : pos + size])
        pos += size + (-size % 4)


def test_modules_come_after_their_dependencies() -> None:
    order = plan_module_order(
        parse_modules_dep(DEP), ["virtio_pci", "virtio_blk", "erofs", "overlay", "nvme"]
    )
    names = [p.rsplit("/", 1)[1] for p in order]
    assert names == [
        "virtio_ring.ko",
        "virtio.ko",
        "virtio_pci-legacy_dev.ko",
        "virtio_pci.ko",
        "virtio_blk.ko",
        "libcrc32c.ko",
        "erofs.ko",
        "overlay.ko",
    ]  # nvme: built in, skipped


def test_loader_holds_busybox_init_and_the_filesystem_modules(tmp_path: Path) -> None:
    loader = write_root_loader(
        write_root(tmp_path / "root.tar"), "erofs", tmp_path / "l.img", 1700000000
    )
    entries = read_newc(loader)
    assert entries["bin/busybox"] == (0o100755, b"BUSYBOX")
    assert entries["dev/console"][0] == 0o20600
    assert entries["lib/modules/libcrc32c.ko"][1] == b"MODULE kernel/lib/libcrc32c.ko"
    assert "lib/modules/squashfs.ko" not in entries and "lib/modules/virtio_net.ko" not in entries
    mode, init = entries["init"]
    assert mode == 0o100755
    text = init.decode()
    assert (
        "for module in virtio_ring virtio virtio_pci_legacy_dev virtio_pci virtio_blk libcrc32c erofs overlay;"
        in text
    )
    assert "root=/dev/vda fstype=erofs" in text and "switch_root" in text
    # reproducible
    again = write_root_loader(tmp_path / "root.tar", "erofs", tmp_path / "again.img", 1700000000)
    assert again.read_bytes() == loader.read_bytes()


@pytest.mark.parametrize("codec", [GZIP, ZSTD, XZ], ids=lambda c: c.name)
def test_compressed_modules_are_decompressed_for_insmod(tmp_path: Path, codec: Codec) -> None:
    root = write_root(tmp_path / "root.tar", codec=codec)
    entries = read_newc(write_root_loader(root, "erofs", tmp_path / "l.img", 1700000000))
    assert entries["lib/modules/libcrc32c.ko"][1] == b"MODULE kernel/lib/libcrc32c.ko"
    assert (
        entries["lib/modules/virtio_pci_legacy_dev.ko"][1]
        == b"MODULE kernel/drivers/virtio/virtio_pci-legacy_dev.ko"
    )
    assert (
        "for module in virtio_ring virtio virtio_pci_legacy_dev virtio_pci virtio_blk libcrc32c erofs overlay;"
        in (entries["init"][1].decode())
    )


def test_a_corrupt_compressed_module_is_a_usage_error(tmp_path: Path) -> None:
    root = tmp_path / "root.tar"
    with tarfile.open(root, "w") as tar:
        for name, data in (
            ("bin/busybox", b"BUSYBOX"),
            (f"{MODDIR}/modules.dep", b"kernel/fs/erofs/erofs.ko.xz:\n"),
            (f"{MODDIR}/kernel/fs/erofs/erofs.ko.xz", XZ.compress(b"MODULE")[:-9]),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(
        UsageError, match=r"kernel\+erofs: module kernel/fs/erofs/erofs.ko.xz: corrupt xz data"
    ):
        write_root_loader(root, "erofs", tmp_path / "l", 0)


def test_kernel_with_builtin_drivers_needs_no_module(tmp_path: Path) -> None:
    loader = write_root_loader(
        write_root(tmp_path / "root.tar", modules=False), "squashfs", tmp_path / "l", 0
    )
    entries = read_newc(loader)
    assert not [name for name in entries if name.endswith(".ko")]
    assert "for module in ;" in entries["init"][1].decode()


def test_root_without_busybox_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="busybox"):
        write_root_loader(
            write_root(tmp_path / "root.tar", busybox=False), "squashfs", tmp_path / "l", 0
        )
