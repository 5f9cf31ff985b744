"""Helpers for the QEMU launcher tests: a tiny busybox initrd built here, the host kernel,
the CLI run as a user runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

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
    "virtio_blk",
)

# The guest's /init: print a marker and the kernel command line, power off at once when the
# command line says test.poweroff=early; else load modules, show a CIDATA CD's user-data and
# an extra disk's size, power off if test.poweroff=late, else serve HTTP on 7080 and power off
# when the ACPI power button is pressed.
INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /cd /www
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo {MARKER}
echo "CMDLINE: $(cat /proc/cmdline)"
if grep -q test.poweroff=early /proc/cmdline; then poweroff -f; fi
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
sleep 1
for d in /dev/sr0 /dev/sr1; do mount -t iso9660 -o ro $d /cd 2>/dev/null && break; done
if [ -f /cd/user-data ]; then echo USER-DATA-BEGIN; cat /cd/user-data; echo; echo USER-DATA-END; fi
if [ -e /sys/block/vda ]; then echo "EXTRA-DISK: vda $(cat /sys/block/vda/size) sectors"; fi
if grep -q test.poweroff=late /proc/cmdline; then poweroff -f; fi
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


def provision(
    state_root: Path, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run the ``provision`` CLI with its own state root; stdin closed, output captured."""
    env = {**os.environ, "PROVISION_STATE": str(state_root)}
    return subprocess.run(
        [sys.executable, "-m", "provision", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dead_pid() -> int:
    """A pid whose process has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
