"""A stand-in for the agent image while the real components are not built: the host's cloud
kernel and a busybox initrd that answers on TCP 7080 with the agent's JSON shape
({"digest", "hostname", "uptime", "services": {NAME: {"state": ...}}}) and powers off on the
ACPI power button. ``variant`` changes a file in the initrd (and the JSON), so two variants
are two images with two digests."""

from __future__ import annotations

import stat
from pathlib import Path

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


def _newc_entry(name: str, mode: int, data: bytes, rdev: tuple[int, int], ino: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
    out = b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + encoded
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def _module_order(modules_dir: Path) -> list[str]:
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        module, _, rest = line.partition(":")
        deps[module] = rest.split()
    by_name = {Path(m).name.removesuffix(".ko"): m for m in deps}
    order: list[str] = []

    def visit(module: str) -> None:
        if module not in order:
            for dep in reversed(deps[module]):
                visit(dep)
            order.append(module)

    for name in MODULES:
        visit(by_name[name])
    return order


def host_kernel() -> tuple[Path, Path] | None:
    for kernel in sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"), reverse=True):
        modules = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-")
        if (modules / "modules.dep").is_file():
            return kernel, modules
    return None


def write_standin(out: Path, variant: str) -> Path:
    """Write ``out/standin-kernel``, ``-initrd.img``, ``-cmdline``; return the prefix."""
    found = host_kernel()
    if found is None or not BUSYBOX.is_file():
        raise FileNotFoundError("needs linux-image-cloud-amd64 and busybox-static")
    kernel, modules_dir = found
    order = _module_order(modules_dir)
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
    entries += [(f"lib/modules/{Path(m).name}", f, (modules_dir / m).read_bytes(), (0, 0)) for m in order]
    blob = b"".join(_newc_entry(n, m, data, r, i) for i, (n, m, data, r) in enumerate(sorted(entries), 1))
    blob += _newc_entry("TRAILER!!!", 0, b"", (0, 0), 0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "standin-initrd.img").write_bytes(blob + b"\0" * (-len(blob) % 512))
    link = out / "standin-kernel"
    if not link.exists():
        link.symlink_to(kernel)
    (out / "standin-cmdline").write_text("panic=-1 quiet\n")
    return out / "standin"
