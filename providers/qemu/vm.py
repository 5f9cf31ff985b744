"""The local VM launcher: boot a build artifact under QEMU, in the foreground or detached.

Used by ``provision run qemu`` / ``ps`` / ``stop`` and by the reconcile engine's qemu provider::

    handle = start_vm(VMConfig(name="web", artifact=Path("out/web"), tags={"group": "g1"}),
                      state_root=default_state_root(), detach=True)
    wait_serial(handle, r"login:", timeout=60)
    [vm for vm in list_vms(root) if vm.tags.get("group") == "g1"]
    stop_vm("web", root)

Networking is QEMU user-mode only (virtio-net-pci); published ports bind 127.0.0.1.
The boot artifact is never written: disks boot with ``snapshot=on``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from provision.errors import ProvisionError, ToolMissingError, UsageError
from provision.fsutil import copy_file_atomic
from provision.providers.qemu.accel import QEMU, resolve_accel
from provision.providers.qemu.artifact import (
    EXTENSIONS,
    BootKind,
    BootSource,
    resolve_artifact,
    unpack_source,
)
from provision.providers.qemu.cidata import write_cidata_iso
from provision.providers.qemu.qmp import QMPClient, QMPError
from provision.providers.qemu.state import (
    CIDATA_ISO,
    CONFIG_FILE,
    OVMF_VARS,
    PID_FILE,
    QMP_SOCKET,
    SERIAL_LOG,
    PortMapping,
    VMInfo,
    check_vm_name,
    default_state_root,
    list_vms,
    pid_is_vm,
    read_pid,
    read_vm,
    remove_vm_dir,
    vm_dir,
    write_json_atomic,
)
from provision.runner import require_tools, run

__all__ = [
    "DiskSpec", "PortMapping", "StopResult", "VMConfig", "VMError", "VMHandle", "VMInfo",
    "attach_vm", "default_state_root", "find_vms", "list_vms", "parse_disk", "parse_publish", "parse_tag",
    "plan_qemu_argv", "start_vm", "stop_vm", "wait_serial",
]  # fmt: skip

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS_TEMPLATE = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
DETACH_START_TIMEOUT = 60.0


class VMError(ProvisionError):
    """A VM failed to start, stop, or show what was awaited on its console."""


@dataclass(frozen=True)
class DiskSpec:
    """An extra disk: ``FILE[,format=qcow2|raw|vpc|vmdk][,size=10G]`` (created when missing)."""

    path: Path
    format: str | None = None
    size: str | None = None

    @property
    def driver(self) -> str:
        if self.format:
            return self.format
        return EXTENSIONS.get(self.path.suffix.lower(), (BootKind.DISK, "raw"))[1] or "raw"


@dataclass(frozen=True)
class VMConfig:
    """Everything a VM is started with. Every VM gets a CIDATA CD (cloud-init's NoCloud
    layout): ``meta-data`` names the VM (``local-hostname``, which the guest's ``metadata``
    service makes its hostname), ``user-data`` holds ``data`` (empty when None)."""

    name: str
    artifact: Path
    accel: str = "auto"
    mem_mib: int = 1024
    cpus: int = 1
    publish: tuple[PortMapping, ...] = ()
    data: bytes | None = None
    disks: tuple[DiskSpec, ...] = ()
    uefi: bool = False
    cmdline_extra: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    isolated: bool = False  # user-net restrict=on: no traffic beyond the published ports
    qemu: str = QEMU


@dataclass(frozen=True)
class VMHandle:
    """A started VM. ``exit_code`` is set when it ran in the foreground (and has ended)."""

    name: str
    state_dir: Path
    pid: int | None
    serial_log: Path
    qmp_socket: Path
    accel: str
    argv: tuple[str, ...]
    exit_code: int | None = None


@dataclass(frozen=True)
class StopResult:
    """How a VM ended: ACPI power-off, killed after the timeout, or already gone (stale)."""

    name: str
    outcome: Literal["powered-off", "killed", "stale"]


# ---------------------------------------------------------------------------- parse_


def parse_publish(text: str) -> PortMapping:
    """``HOST:GUEST[/udp|/tcp]`` -> PortMapping, or UsageError."""
    match = re.fullmatch(r"(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?", text.strip())
    if not match:
        raise UsageError(f"invalid --publish {text!r}", hint="write HOST:GUEST or HOST:GUEST/udp")
    host, guest = int(match.group(1)), int(match.group(2))
    for port in (host, guest):
        if not 1 <= port <= 65535:
            raise UsageError(f"port {port} out of range in --publish {text!r}")
    return PortMapping(host, guest, "udp" if match.group(3) == "udp" else "tcp")


def parse_disk(text: str) -> DiskSpec:
    """``FILE[,format=F][,size=S]`` -> DiskSpec, or UsageError."""
    path, *options = text.split(",")
    fmt: str | None = None
    size: str | None = None
    for option in options:
        key, _, value = option.partition("=")
        if key == "format" and value in ("raw", "qcow2", "vpc", "vhd", "vmdk"):
            fmt = "vpc" if value == "vhd" else value
        elif key == "size" and re.fullmatch(r"\d+[KMGT]?", value):
            size = value
        else:
            raise UsageError(
                f"invalid --disk option {option!r}",
                hint="write FILE[,format=raw|qcow2|vhd|vmdk][,size=10G]",
            )
    if not path:
        raise UsageError(f"invalid --disk {text!r}: no file")
    return DiskSpec(Path(path), fmt, size)


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"invalid --tag {text!r}", hint="write KEY=VALUE")
    return key, value


# ----------------------------------------------------------------------------- plan_


def _opt(path: Path | str) -> str:
    """A path as a QEMU option value (commas doubled)."""
    return str(path).replace(",", ",,")


def _kernel_cmdline(source: BootSource, extra: str) -> str:
    parts = [source.cmdline] if source.cmdline else []
    if "console=" not in source.cmdline and "console=" not in extra:
        parts.append("console=ttyS0")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def plan_qemu_argv(
    config: VMConfig,
    source: BootSource,
    *,
    accel: str,
    state_dir: Path,
    detach: bool,
    ovmf_code: Path = OVMF_CODE,
) -> list[str]:
    """The QEMU command line for ``config`` booting ``source`` (pure: touches no file; an
    archive source must have been unpacked with ``unpack_source``)."""
    if source.unpack:
        raise VMError(f"{source.path} is an archive: unpack it first (unpack_source)")
    efi = config.uefi or source.efi
    serial = state_dir / SERIAL_LOG
    argv = [
        config.qemu, "-name", f"guest={config.name}", "-accel", accel,
        "-machine", "q35", "-m", str(config.mem_mib), "-smp", str(config.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-pidfile", str(state_dir / PID_FILE),
        "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
    ]  # fmt: skip
    if accel == "kvm":
        argv += ["-cpu", "host"]
    if detach:
        argv += ["-chardev", f"file,id=console,path={_opt(serial)}"]
    else:
        argv += ["-chardev", f"stdio,id=console,signal=on,logfile={_opt(serial)}"]
    argv += ["-serial", "chardev:console", "-device", "virtio-rng-pci"]
    if efi:
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(ovmf_code)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={_opt(state_dir / OVMF_VARS)}",
        ]  # fmt: skip
    netdev = "user,id=net0" + (",restrict=on" if config.isolated else "")
    netdev += "".join(f",hostfwd={p.proto}:127.0.0.1:{p.host}-:{p.guest}" for p in config.publish)
    argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,romfile="]
    if source.kind is BootKind.KERNEL:
        argv += [
            "-kernel",
            str(source.path),
            "-append",
            _kernel_cmdline(source, config.cmdline_extra),
        ]
        if source.initrd is not None:
            argv += ["-initrd", str(source.initrd)]
        if source.root_image is not None:  # kernel+squashfs / kernel+erofs: /dev/vda
            argv += [
                "-drive", f"file={_opt(source.root_image)},format=raw,if=none,id=root0,readonly=on",
                "-device", "virtio-blk-pci,drive=root0",
            ]  # fmt: skip
    elif source.kind is BootKind.CDROM:
        argv += [
            "-drive", f"file={_opt(source.path)},format=raw,if=none,id=boot0,media=cdrom,readonly=on",
            "-device", "ide-cd,drive=boot0,bootindex=0",
        ]  # fmt: skip
    else:
        argv += [
            "-drive",
            f"file={_opt(source.path)},format={source.disk_format or 'raw'},if=none,id=boot0,snapshot=on",
            "-device", "virtio-blk-pci,drive=boot0,bootindex=0",
        ]  # fmt: skip
    for index, disk in enumerate(config.disks, start=1):
        argv += [
            "-drive", f"file={_opt(disk.path.resolve())},format={disk.driver},if=none,id=disk{index}",
            "-device", f"virtio-blk-pci,drive=disk{index}",
        ]  # fmt: skip
    # every VM carries its name (and any user data) on the CIDATA CD
    argv += ["-drive", f"file={_opt(state_dir / CIDATA_ISO)},format=raw,if=none,"
             "id=cidata,media=cdrom,readonly=on"]  # fmt: skip
    # q35 (BIOS and UEFI alike): its ACPI tables route PCI interrupts with a static _PRT,
    # where pc's (QEMU 7.2) is an AML loop the guest interprets for each PCI device (0.2 s
    # under TCG). Its CD-ROM controller is AHCI, which Debian's cloud kernel lacks: the
    # CIDATA CD sits on virtio-scsi (a boot CD on AHCI is read by the firmware only).
    argv += [
        "-device",
        "virtio-scsi-pci,id=scsi0",
        "-device",
        "scsi-cd,drive=cidata,bus=scsi0.0",
    ]
    return argv


# ---------------------------------------------------------------------------- start_


def _check_prerequisites(config: VMConfig, source: BootSource) -> None:
    tools = [config.qemu, "xorriso"]
    tools += ["tar"] if source.unpack else []
    if any(not disk.path.exists() and disk.size for disk in config.disks):
        tools.append("qemu-img")
    require_tools(tools)
    if config.uefi or source.efi:
        for firmware in (OVMF_CODE, OVMF_VARS_TEMPLATE):
            if not firmware.is_file():
                raise ToolMissingError(
                    f"UEFI firmware not found: {firmware}",
                    hint="install with: apt-get install ovmf",
                )
    for disk in config.disks:
        if not disk.path.exists() and disk.size is None:
            raise UsageError(
                f"disk not found: {disk.path}", hint="add ,size=10G to create it, or fix the path"
            )
    if config.mem_mib < 32 or config.cpus < 1:
        raise UsageError("--mem must be at least 32 (MiB) and --cpus at least 1")
    for port in config.publish:
        check_port_free(port)


def check_port_free(port: PortMapping) -> None:
    """Raise UsageError when 127.0.0.1:HOST is already taken (QEMU's own error is vaguer)."""
    kind = socket.SOCK_DGRAM if port.proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:  # as QEMU's hostfwd: a closed VM's TIME_WAIT is no conflict
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port.host))
        except OSError as exc:
            raise UsageError(
                f"cannot publish {port}: 127.0.0.1:{port.host}/{port.proto} is in use "
                f"({exc.strerror})",
                hint="choose another host port (`provision ps` shows what VMs publish)",
            ) from exc


def _claim_state_dir(state_root: Path, name: str) -> Path:
    """Create the VM's state directory; a stale one (its QEMU gone) is replaced."""
    directory = vm_dir(state_root, name)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists():
        info = read_vm(directory)
        pid = read_pid(directory)
        if (info is not None and info.state == "running") or (
            pid is not None and pid_is_vm(pid, directory)
        ):
            raise UsageError(
                f"a VM named {name!r} is already running",
                hint=f"stop it with `provision stop {name}`, or choose another --name",
            )
        remove_vm_dir(directory)
    try:
        directory.mkdir()
    except FileExistsError as exc:
        raise UsageError(f"a VM named {name!r} is being started by someone else") from exc
    return directory


def _prepare_files(config: VMConfig, source: BootSource, directory: Path) -> None:
    if config.uefi or source.efi:
        copy_file_atomic(Path(OVMF_VARS_TEMPLATE), directory / OVMF_VARS)
    write_cidata_iso(directory / CIDATA_ISO, config.data or b"", instance_id=config.name,
                     hostname=config.name)  # fmt: skip
    for disk in config.disks:
        if not disk.path.exists() and disk.size is not None:
            run(["qemu-img", "create", "-q", "-f", disk.driver, disk.path, disk.size])


def _record_config(config: VMConfig, source: BootSource, directory: Path, accel: str,
                   detach: bool, argv: list[str]) -> None:  # fmt: skip
    write_json_atomic(
        directory / CONFIG_FILE,
        {
            "name": config.name,
            "artifact": os.path.abspath(config.artifact),
            "boot": source.kind.value,
            "efi": config.uefi or source.efi,
            "accel_requested": config.accel,
            "accel": accel,
            "mem_mib": config.mem_mib,
            "cpus": config.cpus,
            "published": [
                {"host": p.host, "guest": p.guest, "proto": p.proto} for p in config.publish
            ],
            "tags": dict(config.tags),
            "disks": [str(d.path.resolve()) for d in config.disks],
            "has_data": config.data is not None,
            "detached": detach,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "argv": argv,
        },
    )


def start_vm(config: VMConfig, *, state_root: Path, detach: bool) -> VMHandle:
    """Boot ``config``. Detached: return once QEMU runs in the background. Foreground: the
    serial console is this process's terminal; return when QEMU ends, with its exit code."""
    check_vm_name(config.name)
    source = resolve_artifact(config.artifact.absolute())  # QEMU runs in the state directory
    _check_prerequisites(config, source)
    accel = resolve_accel(config.accel, cache_dir=state_root, qemu=config.qemu)
    directory = _claim_state_dir(state_root, config.name)
    try:
        source = unpack_source(source, directory)
        _prepare_files(config, source, directory)
        argv = plan_qemu_argv(config, source, accel=accel, state_dir=directory, detach=detach)
        _record_config(config, source, directory, accel, detach, argv)
        if detach:
            run([*argv, "-daemonize"], cwd=directory, timeout=DETACH_START_TIMEOUT)
        else:
            result = run(argv, cwd=directory, capture=False, check=False)
    except BaseException:
        remove_vm_dir(directory)
        raise
    handle = VMHandle(
        name=config.name,
        state_dir=directory,
        pid=read_pid(directory) if detach else None,
        serial_log=directory / SERIAL_LOG,
        qmp_socket=directory / QMP_SOCKET,
        accel=accel,
        argv=tuple(argv),
    )
    if detach:
        return handle
    remove_vm_dir(directory)
    code = result.returncode if result.returncode >= 0 else 128 - result.returncode
    return VMHandle(**{**handle.__dict__, "exit_code": code})


def attach_vm(name: str, state_root: Path) -> VMHandle:
    """A handle on an already running VM (e.g. one started by another process)."""
    directory = vm_dir(state_root, name)
    info = read_vm(directory)
    if info is None:
        raise UsageError(f"no VM named {name!r}", hint="`provision ps` lists them")
    argv = info.extra.get("argv", [])
    return VMHandle(
        name=info.name,
        state_dir=directory,
        pid=info.pid,
        serial_log=info.serial_log,
        qmp_socket=directory / QMP_SOCKET,
        accel=info.accel,
        argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
    )


# ----------------------------------------------------------------------------- wait_


def wait_serial(
    handle: VMHandle,
    pattern: str,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Wait until ``pattern`` (a regex) appears on the VM's serial console; return the match."""
    regex = re.compile(pattern)
    deadline = clock() + timeout
    while True:
        try:
            text = handle.serial_log.read_bytes().decode(errors="replace")
        except OSError:
            text = ""
        match = regex.search(text)
        if match:
            return match.group(0)
        if handle.pid is not None and not pid_is_vm(handle.pid, handle.state_dir):
            raise VMError(
                f"VM {handle.name} stopped before {pattern!r} appeared on its console",
                hint=f"its console log: {handle.serial_log}",
            )
        if clock() >= deadline:
            raise VMError(
                f"{pattern!r} did not appear on VM {handle.name}'s console within {timeout:g}s",
                hint=f"its console log: {handle.serial_log}",
            )
        sleep(0.1)


# ----------------------------------------------------------------------------- stop_


def _wait_gone(pid: int, directory: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_is_vm(pid, directory):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop_vm(name: str, state_root: Path, timeout: float = 30.0) -> StopResult:
    """Stop VM ``name``: ACPI power button (QMP ``system_powerdown``), then after ``timeout``
    seconds SIGTERM and SIGKILL. Its state directory is removed; a stale one just cleaned."""
    directory = vm_dir(state_root, name)
    if not directory.is_dir():
        raise UsageError(f"no VM named {name!r}", hint="`provision ps` lists them")
    info = read_vm(directory)
    if info is None or info.pid is None:
        remove_vm_dir(directory)
        return StopResult(name, "stale")
    pid = info.pid
    outcome: Literal["powered-off", "killed"] = "powered-off"
    try:
        with QMPClient(directory / QMP_SOCKET) as qmp:
            qmp.execute("system_powerdown")
        gone = _wait_gone(pid, directory, timeout)
    except QMPError:
        gone = False
    if not gone:
        outcome = "killed"
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if _wait_gone(pid, directory, grace):
                break
        else:
            raise VMError(f"VM {name} (pid {pid}) did not end after SIGKILL")
    remove_vm_dir(directory)
    return StopResult(name, outcome)


def find_vms(state_root: Path, tags: Mapping[str, str]) -> list[VMInfo]:
    """The VMs whose tags include every ``tags`` item (what the reconcile engine observes)."""
    return [vm for vm in list_vms(state_root) if all(vm.tags.get(k) == v for k, v in tags.items())]
