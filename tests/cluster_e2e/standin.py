"""A stand-in for the agent image while the real components are not built: the host's cloud
kernel and a busybox initrd that answers on TCP 7080 with the agent's JSON shape
({"digest", "hostname", "uptime", "services": {NAME: {"state": ...}}}) and powers off on the
ACPI power button. ``variant`` changes a file in the initrd (and the JSON), so two variants
are two images with two digests."""

from __future__ import annotations

import stat
from pathlib import Path

from guest_testkit import host_kernel, module_order, newc_archive

BUSYBOX = Path("/bin/busybox")
MODULES = ("virtio_pci", "virtio_net", "evdev", "button")

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /www
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
for e in /sys/class/input/event*; do
  if grep -q "Power Button" $e/device/name 2>/dev/null; then
    (head -c 1 /dev/input/${e##*/} >/dev/null; poweroff -f) &
  fi
done
hostname standin
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
variant=$(cat /etc/variant)
printf '{"digest": "standin-%s", "hostname": "%s", "uptime": 1, "services": {"standin": {"state": "running", "restarts": 0, "uptime": 1, "pid": 1}}}\\n' "$variant" "$(hostname)" > /www/index.html
httpd -p 7080 -h /www
echo STANDIN-READY
while true; do sleep 60; done
"""


def write_standin(out: Path, variant: str) -> Path:
    """Write ``out/standin-kernel``, ``-initrd.img``, ``-cmdline``; return the prefix."""
    found = host_kernel()
    if found is None or not BUSYBOX.is_file():
        raise FileNotFoundError("needs linux-image-cloud-amd64 and busybox-static")
    kernel, modules_dir = found
    order = module_order(modules_dir, MODULES)
    d, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644
    entries = [
        ("bin", d, b"", (0, 0)),
        ("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes(), (0, 0)),
        ("dev", d, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("dev/null", stat.S_IFCHR | 0o666, b"", (1, 3)),
        ("etc", d, b"", (0, 0)),
        ("etc/variant", f, variant.encode(), (0, 0)),
        ("init", stat.S_IFREG | 0o755, INIT.encode(), (0, 0)),
        ("lib", d, b"", (0, 0)),
        ("lib/modules", d, b"", (0, 0)),
        ("modules.order", f, "\n".join(Path(m).name for m in order).encode(), (0, 0)),
    ]
    entries += [
        (f"lib/modules/{Path(m).name}", f, (modules_dir / m).read_bytes(), (0, 0)) for m in order
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "standin-initrd.img").write_bytes(newc_archive(entries))
    link = out / "standin-kernel"
    if not link.exists():
        link.symlink_to(kernel)
    (out / "standin-cmdline").write_text("panic=-1 quiet\n")
    return out / "standin"
