"""Fixtures for the QEMU launcher tests."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_testkit import host_kernel, module_order
from qemu_testkit import BUSYBOX, INIT, MODULES, write_newc

from provision.providers.qemu.vm import list_vms, stop_vm
from provision.runner import run


@pytest.fixture(scope="session")
def test_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build-output prefix (``.../tiny``): tiny-kernel, tiny-initrd.img, tiny-cmdline."""
    found = host_kernel()
    if found is None or not BUSYBOX.is_file():
        pytest.fail(
            "needs linux-image-cloud-amd64 (kernel + modules) and busybox-static (see scripts/setup.sh)"
        )
    kernel, modules_dir = found
    order = module_order(modules_dir, MODULES)
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        ("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes(), (0, 0)),
        ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("dev/null", stat.S_IFCHR | 0o666, b"", (1, 3)),
        ("init", stat.S_IFREG | 0o755, INIT.encode(), (0, 0)),
        ("lib", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("lib/modules", stat.S_IFDIR | 0o755, b"", (0, 0)),
        (
            "modules.order",
            stat.S_IFREG | 0o644,
            "\n".join(Path(m).name for m in order).encode(),
            (0, 0),
        ),
    ]
    for module in order:
        entries.append(
            (
                f"lib/modules/{Path(module).name}",
                stat.S_IFREG | 0o644,
                (modules_dir / module).read_bytes(),
                (0, 0),
            )
        )
    out = tmp_path_factory.mktemp("artifact")
    write_newc(out / "tiny-initrd.img", entries)
    os.symlink(kernel, out / "tiny-kernel")
    (out / "tiny-cmdline").write_text("panic=-1 quiet\n")
    return out / "tiny"


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    """A private state root; every VM still running at the end is stopped."""
    root = tmp_path / "state"
    yield root
    for vm in list_vms(root):
        stop_vm(vm.name, root, timeout=0)


@pytest.fixture(scope="session")
def hybrid_iso(test_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BIOS-bootable hybrid ISO (isolinux) of the tiny kernel+initrd: boots as a CD-ROM and,
    converted, as a disk. Its kernel command line powers the guest off at once."""
    isolinux = Path("/usr/lib/ISOLINUX/isolinux.bin")
    ldlinux = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
    mbr = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
    if not all(p.is_file() for p in (isolinux, ldlinux, mbr)):
        pytest.fail("needs isolinux and syslinux-common (see scripts/setup.sh)")
    tree = tmp_path_factory.mktemp("isotree")
    (tree / "isolinux").mkdir()
    shutil.copyfile(isolinux, tree / "isolinux" / "isolinux.bin")
    shutil.copyfile(ldlinux, tree / "isolinux" / "ldlinux.c32")
    shutil.copyfile(Path(f"{test_artifact}-kernel"), tree / "kernel")
    shutil.copyfile(Path(f"{test_artifact}-initrd.img"), tree / "initrd.img")
    (tree / "isolinux" / "isolinux.cfg").write_text(
        "DEFAULT linux\nLABEL linux\n  KERNEL /kernel\n"
        "  APPEND initrd=/initrd.img console=ttyS0 panic=-1 quiet test.poweroff=early\n"
    )
    out = tmp_path_factory.mktemp("iso") / "tiny.iso"
    run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-o", out, "-V", "TINY",
         "-isohybrid-mbr", mbr, "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
         "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", tree]
    )  # fmt: skip
    return out
