"""``provision run qemu ARTIFACT``, ``provision ps`` and ``provision stop NAME | --all``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from provision.commands import number_flag
from provision.errors import UsageError
from provision.providers.qemu.accel import ACCEL_CHOICES
from provision.providers.qemu.artifact import check_bootable, resolve_artifact
from provision.providers.qemu.vm import (
    VMConfig,
    default_state_root,
    list_vms,
    parse_disk,
    parse_publish,
    parse_tag,
    start_vm,
    stop_vm,
)
from provision.spec.source import read_spec_bytes


def parse_mem(text: str) -> int:
    """``512``, ``512M``, ``2G`` -> MiB."""
    match = re.fullmatch(r"(\d+)([MG]i?B?)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid memory size {text!r} (write 512, 512M or 2G)")
    value = int(match.group(1))
    mib = value * 1024 if (match.group(2) or "M").upper().startswith("G") else value
    if not 16 <= mib <= 1 << 20:
        raise argparse.ArgumentTypeError(f"invalid memory size {text!r} (from 16M to 1024G)")
    return mib


def register(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="boot a built image locally")
    targets = run.add_subparsers(dest="target", metavar="TARGET", required=True)
    qemu = targets.add_parser(
        "qemu",
        help="boot an artifact under QEMU",
        description="Boot what `provision build` wrote (kernel+initrd prefix, ISO, raw, qcow2, "
        "vhd, vmdk or a build manifest) under QEMU with user-mode networking. The serial console "
        "is the terminal and QEMU's exit code is returned, unless --detach.",
    )
    qemu.add_argument(
        "artifact", type=Path, help="e.g. out/web (for out/web-kernel + out/web-initrd.img)"
    )
    qemu.add_argument("--name", help="VM name (default: the artifact's name)")
    qemu.add_argument("--accel", choices=ACCEL_CHOICES, default="auto",
                      help="tcg (software), kvm, or auto: KVM only when a bounded probe shows it works")  # fmt: skip
    qemu.add_argument(
        "--mem", type=parse_mem, default=1024, help="memory, MiB or with M/G (default 1024)"
    )
    qemu.add_argument(
        "--cpus", type=number_flag(1, 256, integer=True), default=1, help="virtual CPUs (default 1)"
    )
    qemu.add_argument("-p", "--publish", action="append", default=[], metavar="HOST:GUEST[/udp]",
                      help="forward 127.0.0.1:HOST to the guest's port GUEST (repeatable)")  # fmt: skip
    data = qemu.add_mutually_exclusive_group()
    data.add_argument("--data", help="user data, given to the guest on a CIDATA CD")
    data.add_argument("--data-file", type=Path, help="file whose content is the user data")
    qemu.add_argument("--disk", action="append", default=[], metavar="FILE[,format=F][,size=S]",
                      help="attach an extra virtio disk, created when size= is given (repeatable)")  # fmt: skip
    qemu.add_argument("--uefi", action="store_true", help="boot with UEFI firmware (OVMF, q35)")
    qemu.add_argument("--cmdline", default="", help="appended to the kernel command line")
    qemu.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                      help="label the VM (shown by ps; repeatable)")  # fmt: skip
    qemu.add_argument("--isolated", action="store_true",
                      help="the guest reaches nothing but its published ports (user-net restrict=on)")  # fmt: skip
    qemu.add_argument("-d", "--detach", action="store_true",
                      help="run in the background; manage with `provision ps` / `provision stop`")  # fmt: skip
    qemu.set_defaults(func=run_qemu)

    ps = subparsers.add_parser("ps", help="list local VMs")
    ps.add_argument("--json", action="store_true", help="print JSON")
    ps.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="only VMs with this tag"
    )
    ps.set_defaults(func=ps_vms)

    stop = subparsers.add_parser("stop", help="stop local VMs (ACPI power-off, then kill)")
    stop.add_argument("names", nargs="*", metavar="NAME")
    stop.add_argument("--all", action="store_true", help="stop every local VM")
    stop.add_argument("--timeout", type=number_flag(0, 3600), default=30.0,
                      help="seconds to wait for the guest to power off before killing it (default 30)")  # fmt: skip
    stop.set_defaults(func=stop_vms)


def run_qemu(args: argparse.Namespace) -> int:
    if (
        args.data_file is not None
    ):  # a regular file (or - for stdin), bounded: never a FIFO or /dev/zero
        data, problems = read_spec_bytes(args.data_file)
        if data is None:
            raise UsageError(f"--data-file {problems[0]}")
    else:
        data = args.data.encode() if args.data is not None else None
    source = resolve_artifact(args.artifact)
    check_bootable(source)
    name = args.name or source.label
    config = VMConfig(
        name=name,
        artifact=args.artifact,
        accel=args.accel,
        mem_mib=args.mem,
        cpus=args.cpus,
        publish=tuple(parse_publish(p) for p in args.publish),
        data=data,
        disks=tuple(parse_disk(d) for d in args.disk),
        uefi=args.uefi,
        cmdline_extra=args.cmdline,
        tags=dict(parse_tag(t) for t in args.tag),
        isolated=args.isolated,
    )
    state_root = default_state_root()
    if not args.detach:
        sys.stdout.flush()
    handle = start_vm(config, state_root=state_root, detach=args.detach)
    if not args.detach:
        return handle.exit_code or 0
    ports = ", ".join(str(p) for p in config.publish) or "none"
    print(f"{handle.name} started (pid {handle.pid}, accel {handle.accel})")
    print(f"  console log: {handle.serial_log}")
    print(f"  published:   {ports}")
    return 0


def ps_vms(args: argparse.Namespace) -> int:
    wanted = dict(parse_tag(t) for t in args.tag)
    vms = [
        vm for vm in list_vms(default_state_root())
        if all(vm.tags.get(k) == v for k, v in wanted.items())
    ]  # fmt: skip
    if args.json:
        print(json.dumps([vm.to_json() for vm in vms], indent=2))
        return 0
    rows = [("NAME", "STATE", "PID", "ACCEL", "PUBLISHED", "STARTED", "TAGS")]
    for vm in vms:
        rows.append((
            vm.name, vm.state, str(vm.pid or "-"), vm.accel,
            ",".join(f"{p.host}:{p.guest}/{p.proto}" for p in vm.published) or "-",
            vm.started_at or "-",
            ",".join(f"{k}={v}" for k, v in sorted(vm.tags.items())) or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def stop_vms(args: argparse.Namespace) -> int:
    if args.all == bool(args.names):
        raise UsageError("name the VMs to stop, or give --all (not both)")
    root = default_state_root()
    names = [vm.name for vm in list_vms(root)] if args.all else args.names
    for name in names:
        result = stop_vm(name, root, timeout=args.timeout)
        print(f"{result.name}: {result.outcome}")
    return 0
