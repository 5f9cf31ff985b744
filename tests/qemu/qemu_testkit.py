"""Helpers for the QEMU launcher tests: a tiny busybox initrd built here, the host kernel,
the CLI run as a user runs it."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from cli_testkit import run_provision
from guest_testkit import NewcEntry, newc_archive

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


def write_newc(path: Path, entries: list[NewcEntry]) -> None:
    """A newc cpio archive (owner 0, mtime 0) of ``entries``, sorted by name."""
    path.write_bytes(newc_archive(entries))


def provision(
    state_root: Path, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run the ``provision`` CLI with its own state root; stdin closed, output captured."""
    return run_provision(*args, env={"PROVISION_STATE": str(state_root)}, timeout=timeout)


def dead_pid() -> int:
    """A pid whose process has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
