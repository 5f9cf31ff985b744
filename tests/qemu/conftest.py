"""Fixtures for the QEMU launcher tests: a tiny busybox initrd built here, the host kernel."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.providers.qemu import list_vms, stop_vm

BUSYBOX = Path("/bin/busybox")
MARKER = "PROVISION-QEMU-TEST-MARKER"
MODULES = (
    "virtio_pci",
    "virtio_net",
    "ata_piix",
    "sr_mod",
    "isofs",
    "virtio_scsi",
    "evdev",
    "button",
)

# The guest's /init: print a marker and the kernel command line, power off at once when the
# command line says test.poweroff, else show a CIDATA CD's user-data, serve HTTP on 7080 and
# power off when the ACPI power button is pressed.
INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /cd /www
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo {MARKER}
echo "CMDLINE: $(cat /proc/cmdline)"
if grep -q test.poweroff /proc/cmdline; then poweroff -f; fi
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
sleep 1
for d in /dev/sr0 /dev/sr1; do mount -t iso9660 -o ro $d /cd 2>/dev/null && break; done
if [ -f /cd/user-data ]; then echo USER-DATA-BEGIN; cat /cd/user-data; echo; echo USER-DATA-END; fi
for e in /sys/class/input/event*; do
  if grep -q "Power Button" $e/device/name 2>/dev/null; then
    (head -c 1 /dev/input/${{e##*/}} >/dev/null; echo POWER-BUTTON; poweroff -f) &
  fi
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo hello-from-guest > /www/index.html
httpd -p 7080 -h /www
echo GUEST-READY
while true; do sleep 60; done
"""


def _newc_entry(
    name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
    header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
    out = header + encoded
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def write_newc(path: Path, entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> None:
    """A newc cpio archive (owner 0, mtime 0) of ``entries``, sorted by name."""
    blob = b"".join(
        _newc_entry(name, mode, data, rdev, ino)
        for ino, (name, mode, data, rdev) in enumerate(sorted(entries), start=1)
    )
    blob += _newc_entry("TRAILER!!!", 0)
    path.write_bytes(blob + b"\0" * (-len(blob) % 512))


def _module_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        module, _, rest = line.partition(":")
        deps[module] = rest.split()
    by_name = {Path(m).name.removesuffix(".ko"): m for m in deps}
    order: list[str] = []

    def visit(module: str) -> None:
        if module in order:
            return
        for dep in reversed(deps[module]):
            visit(dep)
        order.append(module)

    for name in wanted:
        visit(by_name[name])
    return order


def _host_kernel() -> tuple[Path, Path] | None:
    kernels = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    for kernel in reversed(kernels):
        modules = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-")
        if (modules / "modules.dep").is_file():
            return kernel, modules
    return None


@pytest.fixture(scope="session")
def test_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build-output prefix (``.../tiny``): tiny-kernel, tiny-initrd.img, tiny-cmdline."""
    found = _host_kernel()
    if found is None or not BUSYBOX.is_file():
        pytest.skip("needs linux-image-cloud-amd64 (kernel + modules) and busybox-static")
    kernel, modules_dir = found
    order = _module_order(modules_dir, MODULES)
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
