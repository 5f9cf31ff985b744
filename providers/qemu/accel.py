"""Choose QEMU's accelerator: ``tcg`` (software), ``kvm``, or ``auto`` (KVM only when it works).

A ``/dev/kvm`` node is not proof that KVM works: on a host that is itself a VM without nested
virtualisation the node exists, ``KVM_CREATE_VM`` succeeds, a real-mode guest even runs, and
then the guest hangs for ever as soon as it enters long mode (and ``-accel kvm:tcg`` does not
fall back). So ``auto`` probes once, with a bounded test boot of a 64 KiB firmware that goes
real mode -> protected mode -> paging + long mode and then writes to QEMU's ``isa-debug-exit``
port. KVM is used only when that guest exits with the expected code within the time limit.
The verdict is cached per host boot and QEMU binary (``accel.json`` in the state root).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from provision.errors import CommandError, UsageError
from provision.fsutil import write_text_atomic
from provision.runner import require_tools, run

log = logging.getLogger(__name__)

Accel = Literal["tcg", "kvm"]
ACCEL_CHOICES = ("tcg", "kvm", "auto")
QEMU = "qemu-system-x86_64"
KVM_DEVICE = "/dev/kvm"
PROBE_TIMEOUT = 5.0

# Assembled once from this GNU as source (``as --64``, ``ld -Ttext=0 --oformat binary``),
# mapped by QEMU's pc machine at 0xF0000 (and the reset vector at 0xFFFFFFF0):
#   .code16: cli; lgdtl %cs:gdtr; cr0 |= PE; ljmpl $0x08, $(0xF0000 + pm32)
#   .code32 pm32: load 0x10 data segments; zero 0x1000-0x3fff; PML4[0] = 0x2003;
#     PDPT[0] = 0x3003; PD[0] = 0x83 (2 MiB identity page); cr3 = 0x1000; cr4 |= PAE;
#     EFER |= LME; cr0 |= PG; ljmp $0x18, $(0xF0000 + lm64)
#   .code64 lm64: movb $0x2a, %al; outb %al, $0xf4; 1: hlt; jmp 1b
#   gdt: null, code32 0x00CF9A000000FFFF, data 0x00CF92000000FFFF, code64 0x00AF9A000000FFFF
#   .org 0xFFF0: ljmp $0xF000, $_start
_PROBE_CODE = bytes.fromhex(
    "fa2e660f0116a8000f20c06683c8010f22c066ea1a000f00080066b810008ed88ec08ed0bf0010000031c0"
    "b9000c0000f3abc7050010000003200000c7050020000003300000c7050030000083000000b8001000000f"
    "22d80f20e083c8200f22e0b9800000c00f320d000100000f300f20c00d000000800f22c0ea81000f001800"
    "b02ae6f4f4ebfd0000000000000000ffff0000009acf00ffff00000092cf00ffff0000009aaf001f008800"
    "0f00"
)
_PROBE_RESET_VECTOR = bytes.fromhex("ea000000f0")
# isa-debug-exit makes QEMU exit with (value << 1) | 1.
PROBE_EXIT_CODE = (0x2A << 1) | 1

_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_API_VERSION = 12


@dataclass(frozen=True)
class AccelVerdict:
    """Whether KVM works on this host, and why (what a user reads in ``--verbose``/docs)."""

    kvm_works: bool
    reason: str
    seconds: float


def build_probe_firmware() -> bytes:
    """The 64 KiB probe firmware image (``-bios``), padded with ``hlt``."""
    image = bytearray(b"\xf4" * 0x10000)
    image[: len(_PROBE_CODE)] = _PROBE_CODE
    image[0xFFF0 : 0xFFF0 + len(_PROBE_RESET_VECTOR)] = _PROBE_RESET_VECTOR
    return bytes(image)


def probe_accel_boot(accel: Accel, *, qemu: str = QEMU, timeout: float = PROBE_TIMEOUT) -> bool:
    """Boot the probe firmware under ``accel``; True when it reached long mode and exited."""
    with tempfile.TemporaryDirectory(prefix="provision-kvm-probe-") as tmp:
        firmware = Path(tmp) / "probe.bin"
        firmware.write_bytes(build_probe_firmware())
        argv = [
            qemu, "-accel", accel, "-machine", "pc", "-m", "16", "-bios", str(firmware),
            "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "none",
            "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]  # fmt: skip
        try:
            result = run(argv, timeout=timeout, check=False)
        except CommandError:
            return False
        return result.returncode == PROBE_EXIT_CODE


def _kvm_ioctls_work(device: str) -> str | None:
    """None when the KVM device answers the API version and creates a VM, else why not."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {device}: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
        if version != _KVM_API_VERSION:
            return f"{device} speaks KVM API {version}, not {_KVM_API_VERSION}"
        vm_fd = fcntl.ioctl(fd, _KVM_CREATE_VM, 0)
        os.close(vm_fd)
    except OSError as exc:
        return f"KVM ioctl failed on {device}: {exc.strerror}"
    finally:
        os.close(fd)
    return None


def probe_kvm(
    *, qemu: str = QEMU, device: str = KVM_DEVICE, timeout: float = PROBE_TIMEOUT
) -> AccelVerdict:
    """Decide, in bounded time, whether guests can run under KVM on this host."""
    started = time.monotonic()
    if not os.path.exists(device):
        return AccelVerdict(False, f"{device} does not exist", 0.0)
    why_not = _kvm_ioctls_work(device)
    if why_not is not None:
        return AccelVerdict(False, why_not, time.monotonic() - started)
    works = probe_accel_boot("kvm", qemu=qemu, timeout=timeout)
    elapsed = time.monotonic() - started
    if works:
        return AccelVerdict(True, "a long-mode test guest ran under KVM", elapsed)
    return AccelVerdict(
        False, f"a long-mode test guest did not finish under KVM in {timeout:g}s", elapsed
    )


def _cache_key(qemu: str, device: str) -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    binary = shutil.which(qemu) or qemu
    try:
        stat = os.stat(binary)
        binary_id = f"{binary}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        binary_id = binary
    return hashlib.sha256(f"{boot_id}\0{binary_id}\0{device}".encode()).hexdigest()


def resolve_accel(
    accel: str,
    *,
    cache_dir: Path | None = None,
    qemu: str = QEMU,
    device: str = KVM_DEVICE,
    timeout: float = PROBE_TIMEOUT,
) -> Accel:
    """Turn ``tcg`` / ``kvm`` / ``auto`` into the accelerator QEMU is given.

    ``auto`` probes KVM (bounded by ``timeout``) and caches the verdict in
    ``cache_dir/accel.json``; anything short of a working KVM gives ``tcg``.
    """
    if accel == "tcg":
        return "tcg"
    if accel == "kvm":
        return "kvm"
    if accel != "auto":
        raise UsageError(f"unknown accelerator {accel!r}", hint="use one of: tcg, kvm, auto")
    require_tools([qemu])
    key = _cache_key(qemu, device)
    cache = cache_dir / "accel.json" if cache_dir is not None else None
    if cache is not None:
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                return "kvm" if cached.get("kvm_works") else "tcg"
        except (OSError, ValueError, AttributeError):
            pass
    log.info("probing KVM with a test guest (at most %gs)", timeout)
    verdict = probe_kvm(qemu=qemu, device=device, timeout=timeout)
    if not verdict.kvm_works and os.path.exists(device):
        log.warning("KVM is not usable (%s); using tcg, software emulation", verdict.reason)
    else:
        log.info("KVM %s: %s", "usable" if verdict.kvm_works else "not usable", verdict.reason)
    if cache is not None:
        write_accel_cache(cache, key, verdict)
    return "kvm" if verdict.kvm_works else "tcg"


def write_accel_cache(cache: Path, key: str, verdict: AccelVerdict) -> None:
    """Record a probe verdict atomically (temp name, then rename)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    record = {"key": key, "kvm_works": verdict.kvm_works, "reason": verdict.reason,
              "seconds": round(verdict.seconds, 3)}  # fmt: skip
    write_text_atomic(cache, json.dumps(record, indent=2) + "\n")
