"""The one choke point through which every external command runs."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from provision.errors import CommandError, ToolMissingError

# The Debian package of every program provision runs: exactly those (tests/test_runner.py
# derives the programs from the code and compares), so a missing one is reported with the
# package to install before any work starts.
TOOL_PACKAGES: Mapping[str, str] = {
    # build: formats
    "fakeroot": "fakeroot",
    "mcopy": "mtools",
    "mkfs.erofs": "erofs-utils",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mksquashfs": "squashfs-tools",
    "mmd": "mtools",
    "objcopy": "binutils",
    "qemu-img": "qemu-utils",
    "sfdisk": "fdisk",
    "syslinux": "syslinux",
    "tar": "tar",
    "xorriso": "xorriso",
    # pkg: component images from Debian packages
    "apt-cache": "apt",
    "apt-config": "apt",
    "apt-get": "apt",
    "depmod": "kmod",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    # run, up: local machines
    "qemu-system-x86_64": "qemu-system-x86",
    # metal: IPMI power control
    "ipmitool": "ipmitool",
}
log = logging.getLogger(__name__)


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
    """Run ``argv`` (a list, never a shell string), logged at debug level (``provision -v``).
    On failure raise CommandError with the command line as one could paste it, and the tail
    of what it printed. The environment and the input are never logged (they may hold
    secrets)."""
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("run() needs a program to run")
    require_tools([args[0]]) if os.sep not in args[0] else None
    command = shlex.join(args)
    log.debug("run: %s%s", command, f"  (in {cwd})" if cwd is not None else "")
    started = time.monotonic()
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
        log.debug("timed out after %ss: %s", timeout, args[0])
        raise CommandError(f"timed out after {timeout}s: {command}") from exc
    except OSError as exc:  # a program given by path that is missing or not executable
        raise CommandError(f"cannot run {command}: {exc.strerror}") from None
    log.debug(
        "exit code %d after %.2fs: %s", result.returncode, time.monotonic() - started, args[0]
    )
    if check and result.returncode != 0:
        tail = (result.stderr or b"").decode(errors="replace").strip().splitlines()[-15:]
        raise CommandError(
            f"command failed with exit code {result.returncode}: {command}"
            + ("\n" + "\n".join(tail) if tail else "")
        )
    return result
