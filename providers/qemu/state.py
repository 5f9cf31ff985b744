"""Where local VMs live: one state directory per VM, read back by ``ps``, ``stop`` and the
reconcile engine's qemu provider.

``STATE_ROOT/vms/NAME/`` holds ``config.json`` (what was asked and resolved, tags, ports,
start time; written atomically), ``pid`` (written by QEMU itself), ``serial.log``,
``qmp.sock`` and, when used, ``cidata.iso`` and ``OVMF_VARS.fd``. ``STATE_ROOT`` is
``$PROVISION_STATE``, else ``$XDG_STATE_HOME/provision``, else ``~/.local/state/provision``.
A pid whose process is gone (or is no longer this VM's QEMU) reads as ``stopped``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from provision.errors import UsageError
from provision.fsutil import write_json_atomic as write_json_atomic

CONFIG_FILE = "config.json"
PID_FILE = "pid"
SERIAL_LOG = "serial.log"
QMP_SOCKET = "qmp.sock"
CIDATA_ISO = "cidata.iso"
OVMF_VARS = "OVMF_VARS.fd"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

VMState = Literal["running", "stopped"]


@dataclass(frozen=True)
class PortMapping:
    """A host port on 127.0.0.1 forwarded to a guest port (QEMU user-net ``hostfwd``)."""

    host: int
    guest: int
    proto: Literal["tcp", "udp"] = "tcp"

    def __str__(self) -> str:
        return f"127.0.0.1:{self.host}->{self.guest}/{self.proto}"


@dataclass(frozen=True)
class VMInfo:
    """What ``list_vms`` reports about one VM."""

    name: str
    pid: int | None
    state: VMState
    tags: Mapping[str, str]
    published: tuple[PortMapping, ...]
    started_at: str
    serial_log: Path
    state_dir: Path
    accel: str
    artifact: str
    detached: bool
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.state,
            "tags": dict(self.tags),
            "published": [
                {"host": p.host, "guest": p.guest, "proto": p.proto} for p in self.published
            ],
            "started_at": self.started_at,
            "serial_log": str(self.serial_log),
            "state_dir": str(self.state_dir),
            "accel": self.accel,
            "artifact": self.artifact,
            "detached": self.detached,
        }


def default_state_root() -> Path:
    """``$PROVISION_STATE``, else ``$XDG_STATE_HOME/provision``, else ``~/.local/state/provision``."""
    explicit = os.environ.get("PROVISION_STATE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "provision"


def check_vm_name(name: str) -> str:
    """Return ``name`` when it can name a VM (and a directory), else raise UsageError."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(
            f"invalid VM name {name!r}",
            hint="use letters, digits, '.', '_' and '-' (at most 63), starting with a letter or digit",
        )
    return name


def vm_dir(state_root: Path, name: str) -> Path:
    return state_root / "vms" / check_vm_name(name)


def read_pid(directory: Path) -> int | None:
    try:
        text = (directory / PID_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_is_vm(pid: int, directory: Path) -> bool:
    """True when ``pid`` is a live (not zombie) QEMU whose command line names ``directory``.

    Checking the command line guards against a recycled pid being taken for the VM."""
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    if state in ("Z", "X"):
        return False
    args = cmdline.split(b"\0")
    if not args or b"qemu" not in os.path.basename(args[0]):
        return False
    marker = os.fsencode(directory.resolve()) + b"/"
    # QEMU runs with the state directory as its working directory and names it in -name.
    return any(marker in arg for arg in args) or _cwd_is(proc, directory)


def _cwd_is(proc: Path, directory: Path) -> bool:
    try:
        return Path(os.readlink(proc / "cwd")) == directory.resolve()
    except OSError:
        return False


def read_vm(directory: Path) -> VMInfo | None:
    """Read one VM's state directory; None when it holds no readable config."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    pid = read_pid(directory)
    running = pid is not None and pid_is_vm(pid, directory)
    published = tuple(
        PortMapping(int(p["host"]), int(p["guest"]), "udp" if p.get("proto") == "udp" else "tcp")
        for p in config.get("published", [])
    )
    return VMInfo(
        name=str(config.get("name", directory.name)),
        pid=pid if running else None,
        state="running" if running else "stopped",
        tags={str(k): str(v) for k, v in dict(config.get("tags", {})).items()},
        published=published,
        started_at=str(config.get("started_at", "")),
        serial_log=directory / SERIAL_LOG,
        state_dir=directory,
        accel=str(config.get("accel", "")),
        artifact=str(config.get("artifact", "")),
        detached=bool(config.get("detached", False)),
        extra=config,
    )


def list_vms(state_root: Path) -> list[VMInfo]:
    """Every VM with a state directory under ``state_root``, sorted by name."""
    root = state_root / "vms"
    if not root.is_dir():
        return []
    found = []
    for directory in sorted(root.iterdir()):
        if directory.is_dir() and not directory.name.startswith("."):
            info = read_vm(directory)
            if info is not None:
                found.append(info)
    return found


def remove_vm_dir(directory: Path) -> None:
    """Delete a VM's state directory (after it stopped)."""
    shutil.rmtree(directory, ignore_errors=True)
