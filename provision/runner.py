"""The one choke point through which every external command runs."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from provision.errors import CommandError, ToolMissingError

# Which Debian package provides each program provision may call.
TOOL_PACKAGES: Mapping[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "xorriso": "xorriso",
    "mcopy": "mtools",
    "mmd": "mtools",
    "objcopy": "binutils", "fakeroot": "fakeroot", "tar": "tar", "unsquashfs": "squashfs-tools",
    "mkfs.vfat": "dosfstools",
    "sfdisk": "fdisk",
    "syslinux": "syslinux",
    "grub-mkimage": "grub-common",
    "mksquashfs": "squashfs-tools",
    "mkfs.erofs": "erofs-utils",
    "mkfs.ext4": "e2fsprogs",
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "dnsmasq": "dnsmasq",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "gpgv": "gpgv",
    "zstd": "zstd",
    "xz": "xz-utils",
    "busybox": "busybox-static",
    "runc": "runc",
    "ipmitool": "ipmitool",
}


def find_missing_tools(tools: Iterable[str]) -> list[str]:
    """Return the programs of ``tools`` that are not on PATH, in the order given."""
    return [tool for tool in dict.fromkeys(tools) if shutil.which(tool) is None]


def require_tools(tools: Iterable[str]) -> None:
    """Raise before any work starts when a needed program is missing, naming its package."""
    missing = find_missing_tools(tools)
    if not missing:
        return
    packages = sorted({TOOL_PACKAGES.get(tool, tool) for tool in missing})
    raise ToolMissingError(
        "missing program" + ("s" if len(missing) > 1 else "") + ": " + ", ".join(missing),
        hint="install with: apt-get install " + " ".join(packages),
    )


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    timeout: float | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (a list, never a shell string). On failure raise CommandError with the
    command line as one could paste it, and the tail of what it printed."""
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("run() needs a program to run")
    require_tools([args[0]]) if os.sep not in args[0] else None
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        result = subprocess.run(  # noqa: S603 - argv list, no shell
            args,
            input=input,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"timed out after {timeout}s: {shlex.join(args)}") from exc
    if check and result.returncode != 0:
        tail = (result.stderr or b"").decode(errors="replace").strip().splitlines()[-15:]
        raise CommandError(
            f"command failed with exit code {result.returncode}: {shlex.join(args)}"
            + ("\n" + "\n".join(tail) if tail else "")
        )
    return result
