"""The bare-metal lab a user edits: profiles (what boots), groups (which machines get which
profile, matchbox's selector rule) and the inventory (the machines: name, MACs, labels, BMC).

One YAML file, read strictly like every spec: unknown keys, wrong types, duplicate names,
malformed MACs and references to missing profiles are all reported at once, each located
(``lab.yml:12:9: groups[1].profile: no profile 'wbe' (did you mean 'web'?)``)::

    profiles:
      web:
        kernel: sha256-<hex>/web-kernel      # paths under the served root
        initrd: [sha256-<hex>/web-initrd.img]
        cmdline: "console=ttyS0"
    groups:
      - name: web
        profile: web
        selector: {mac: "52:54:00:00:00:01"}  # mac, uuid, hostname, serial or any machine label
        metadata: {hostname: web-1, userData: "...", sshKeys: ["ssh-ed25519 ..."]}
    default: exit                             # exit (boot the next device) | profile NAME
    machines:
      - name: node-1
        macs: ["52:54:00:00:00:01"]
        labels: {rack: a}
        disk: /dev/vda                        # optional: the local disk images are installed on
        bmc: {driver: redfish, address: "http://127.0.0.1:8000/redfish/v1/Systems/1",
              username: admin, passwordFile: bmc.pass}
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import SpecError
from provision.spec.reader import DocumentReader, KeyPath
from provision.spec.source import parse_yaml_text, read_text_file

NAME = re.compile(r"[a-z0-9]([a-z0-9_.-]{0,62}[a-z0-9])?")
MAC = re.compile(r"[0-9a-f]{2}([:-][0-9a-f]{2}){5}")
SELECTOR_KEYS = ("mac", "uuid", "hostname", "serial")
LABEL = re.compile(r"[a-z0-9]([a-z0-9_.-]{0,62})?")
SERVED_PATH = re.compile(r"[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*")
DISK = re.compile(r"/dev/[A-Za-z0-9_.:+-]+(/[A-Za-z0-9_.:+-]+)*")
HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,62})?")
SSH_KEY = re.compile(r"[^\n\r\0]+")
USER_DATA_MAX = 65536  # bytes of the user data's JSON: a machine's metadata stays small


def normalise_mac(text: str) -> str:
    """``52-54-00-AA-00-01`` -> ``52:54:00:aa:00:01``."""
    return text.strip().lower().replace("-", ":")


@dataclass(frozen=True)
class Profile:
    name: str
    kernel: str
    initrd: tuple[str, ...]
    cmdline: str = ""


@dataclass(frozen=True)
class Group:
    name: str
    profile: str
    selector: Mapping[str, str]
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bmc:
    driver: str  # redfish | ipmi
    address: str
    username: str = ""
    password_file: str = ""
    password_env: str = ""


@dataclass(frozen=True)
class Machine:
    """One machine of the inventory. ``address``: where it is reached (its IP, or a NAT host);
    ``ports``: guest port -> port at ``address`` when a NAT forwards them (virtual labs);
    ``disk``: the local disk (a /dev path as the booted machine's kernel names it) images are
    installed on, keeping its provision-data partition; empty: the machine has none."""

    name: str
    macs: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    bmc: Bmc | None = None
    address: str = ""
    ports: Mapping[int, int] = field(default_factory=dict)
    disk: str = ""


@dataclass(frozen=True)
class Lab:
    profiles: Mapping[str, Profile]
    groups: tuple[Group, ...]
    machines: tuple[Machine, ...]
    default: str  # "exit" or a profile name
    source_file: str = "<lab>"

    def __post_init__(self) -> None:
        index = {mac: machine for machine in self.machines for mac in machine.macs}
        object.__setattr__(self, "_by_mac", index)

    def machine_by_mac(self, mac: str) -> Machine | None:
        found: Machine | None = self.__dict__["_by_mac"].get(normalise_mac(mac))
        return found


class _Reader(DocumentReader):
    """The document reader with the lab file's names."""

    def name(self, value: Any, path: KeyPath) -> str:
        return self.text(value, path, NAME, "1-64 lowercase letters, digits, '.', '_' or '-'")


def parse_lab(text: str, file: str = "<lab>") -> Lab:
    """Parse and check a lab file; a SpecError lists every located problem."""
    root, problems = parse_yaml_text(text, file)
    if problems:
        raise SpecError(problems, hint="see docs/metal.md for the lab file")
    r = _Reader(root, file)
    top = r.mapping(root, (), ("profiles", "groups", "machines", "default"))
    profiles = _profiles(r, top.get("profiles"))
    groups = _groups(r, top.get("groups"), profiles)
    machines = _machines(r, top.get("machines"))
    default = top.get("default", "exit")
    if not isinstance(default, str) or (default != "exit" and default not in profiles):
        r.fail(("default",), f"must be exit or a profile name, not {default!r}")
    if r.problems:
        raise SpecError(r.problems, hint="see docs/metal.md for the lab file")
    return Lab(profiles, groups, machines, str(default), file)


def load_lab(path: Path) -> Lab:
    text, problems = read_text_file(path)
    if text is None:
        raise SpecError(problems)
    return parse_lab(text, str(path))


def _profiles(r: _Reader, value: Any) -> dict[str, Profile]:
    result: dict[str, Profile] = {}
    if value is None:
        return result
    if not isinstance(value, dict):
        r.fail(("profiles",), "must be a mapping of profile name to what it boots")
        return result
    for key, body in value.items():
        path: KeyPath = ("profiles", str(key))
        name = r.name(key, path)
        fields = r.mapping(body, path, ("kernel", "initrd", "cmdline"), ("kernel",))
        kernel = (
            _served_path(r, fields.get("kernel", ""), (*path, "kernel"))
            if "kernel" in fields
            else ""
        )
        raw_initrd = fields.get("initrd", [])
        raw_initrd = [raw_initrd] if isinstance(raw_initrd, str) else raw_initrd
        if not isinstance(raw_initrd, list):
            r.fail((*path, "initrd"), "must be a path or a list of paths")
            raw_initrd = []
        initrd = tuple(
            _served_path(r, item, (*path, "initrd", i)) for i, item in enumerate(raw_initrd)
        )
        cmdline = r.text(
            fields.get("cmdline", ""),
            (*path, "cmdline"),
            re.compile(r"[^\n\r\0]*"),
            "one line of text",
        )
        result[name] = Profile(name, kernel, initrd, cmdline)
    return result


def _served_path(r: _Reader, value: Any, path: KeyPath) -> str:
    ok = (
        isinstance(value, str)
        and SERVED_PATH.fullmatch(value)
        and not {".", ".."} & set(value.split("/"))
    )
    if not ok:
        r.fail(
            path, f"must be a path under the served root (no '..', no leading '/'), not {value!r}"
        )
        return ""
    return str(value)


def _groups(r: _Reader, value: Any, profiles: Mapping[str, Profile]) -> tuple[Group, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        r.fail(("groups",), "must be a list of groups")
        return ()
    groups: list[Group] = []
    seen: set[str] = set()
    for index, body in enumerate(value):
        path: KeyPath = ("groups", index)
        fields = r.mapping(
            body, path, ("name", "profile", "selector", "metadata"), ("name", "profile")
        )
        name = r.name(fields.get("name"), (*path, "name")) if "name" in fields else f"group{index}"
        if name in seen:
            r.fail((*path, "name"), f"group {name!r} is declared twice")
        seen.add(name)
        profile = str(fields.get("profile", ""))
        if "profile" in fields and profile not in profiles:
            close = difflib.get_close_matches(profile, list(profiles), n=1)
            r.fail(
                (*path, "profile"),
                f"no profile {profile!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
            )
        selector: dict[str, str] = {}
        raw = fields.get("selector") or {}
        if not isinstance(raw, dict):
            r.fail((*path, "selector"), "must be a mapping of selector to value")
            raw = {}
        for key, wanted in raw.items():
            spath: KeyPath = (*path, "selector", str(key))
            if not isinstance(key, str) or not LABEL.fullmatch(key):
                r.fail(
                    spath,
                    "selector keys are mac, uuid, hostname, serial or a label name",
                    at_key=True,
                )
                continue
            text = r.text(
                str(wanted)
                if isinstance(wanted, int | float) and not isinstance(wanted, bool)
                else wanted,
                spath,
                what="a string",
                max_len=256,
            )
            if key == "mac":
                if not MAC.fullmatch(normalise_mac(text)):
                    r.fail(spath, f"must be a MAC address like 52:54:00:12:34:56, not {wanted!r}")
                text = normalise_mac(text)
            selector[key] = text.lower() if key in ("uuid",) else text
        metadata = fields.get("metadata") or {}
        if not isinstance(metadata, dict):
            r.fail((*path, "metadata"), "must be a mapping (hostname, userData, sshKeys)")
            metadata = {}
        r.mapping(metadata, (*path, "metadata"), ("hostname", "userData", "sshKeys"))
        _metadata(r, metadata, (*path, "metadata"))
        groups.append(Group(name, profile, selector, dict(metadata)))
    return tuple(groups)


def _metadata(r: _Reader, metadata: Mapping[str, Any], path: KeyPath) -> None:
    """What a machine's metadata may hold: a host name, user data (text or a JSON tree) of at
    most USER_DATA_MAX bytes as JSON, SSH keys of one line each."""
    if "hostname" in metadata:
        r.text(metadata["hostname"], (*path, "hostname"), HOSTNAME, "a host name", 64)
    if "userData" in metadata:
        user_data = metadata["userData"]
        if not isinstance(user_data, str | dict):
            r.fail((*path, "userData"), "must be text or a mapping (a JSON tree)")
        elif len(json.dumps(user_data).encode()) > USER_DATA_MAX:
            r.fail((*path, "userData"), f"must be at most {USER_DATA_MAX} bytes as JSON")
    if "sshKeys" in metadata:
        keys = metadata["sshKeys"]
        if not isinstance(keys, list):
            r.fail((*path, "sshKeys"), "must be a list of SSH public keys")
        else:
            for index, key in enumerate(keys):
                r.text(
                    key, (*path, "sshKeys", index), SSH_KEY, "an SSH public key (one line)", 8192
                )


def _machines(r: _Reader, value: Any) -> tuple[Machine, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        r.fail(("machines",), "must be a list of machines")
        return ()
    machines: list[Machine] = []
    names: set[str] = set()
    owners: dict[str, str] = {}
    for index, body in enumerate(value):
        path: KeyPath = ("machines", index)
        fields = r.mapping(
            body,
            path,
            ("name", "macs", "labels", "bmc", "address", "ports", "disk"),
            ("name", "macs"),
        )
        name = (
            r.name(fields.get("name"), (*path, "name")) if "name" in fields else f"machine{index}"
        )
        if name in names:
            r.fail((*path, "name"), f"machine {name!r} is declared twice")
        names.add(name)
        raw_macs = fields.get("macs", [])
        if not isinstance(raw_macs, list) or not raw_macs:
            r.fail((*path, "macs"), "must be a non-empty list of MAC addresses")
            raw_macs = []
        macs = []
        for i, raw in enumerate(raw_macs):
            mac = normalise_mac(raw) if isinstance(raw, str) else ""
            if not MAC.fullmatch(mac):
                r.fail(
                    (*path, "macs", i), f"must be a MAC address like 52:54:00:12:34:56, not {raw!r}"
                )
                continue
            if mac in owners:
                r.fail((*path, "macs", i), f"{mac} is already machine {owners[mac]!r}'s")
            owners[mac] = name
            macs.append(mac)
        labels = fields.get("labels") or {}
        if not isinstance(labels, dict):
            r.fail((*path, "labels"), "must be a mapping of label to value")
            labels = {}
        bmc = _bmc(r, fields.get("bmc"), (*path, "bmc")) if "bmc" in fields else None
        address = r.text(
            fields.get("address", ""),
            (*path, "address"),
            re.compile(r"[A-Za-z0-9.:-]{0,255}"),
            "a host name or IP address",
        )
        ports: dict[int, int] = {}
        raw_ports = fields.get("ports") or {}
        if not isinstance(raw_ports, dict):
            r.fail(
                (*path, "ports"), "must map guest ports to ports at the address, e.g. {7080: 41080}"
            )
            raw_ports = {}
        for guest, there in raw_ports.items():
            guest_port = int(guest) if str(guest).isdigit() else 0  # YAML keys arrive as text
            ok = (
                1 <= guest_port <= 65535
                and isinstance(there, int)
                and not isinstance(there, bool)
                and 1 <= there <= 65535
            )
            if not ok:
                r.fail(
                    (*path, "ports", str(guest)),
                    f"must map a guest port to a port from 1 to 65535, not {there!r}",
                )
                continue
            ports[guest_port] = int(there)
        disk = fields.get("disk", "")
        if disk and (not isinstance(disk, str) or not DISK.fullmatch(disk) or "/../" in disk + "/"):
            r.fail(
                (*path, "disk"), f"must be a device path like /dev/vda or /dev/sda, not {disk!r}"
            )
            disk = ""
        machines.append(
            Machine(
                name,
                tuple(macs),
                {str(k): str(v) for k, v in labels.items()},
                bmc,
                address,
                ports,
                str(disk or ""),
            )
        )
    return tuple(machines)


def _bmc(r: _Reader, value: Any, path: KeyPath) -> Bmc | None:
    fields = r.mapping(
        value,
        path,
        ("driver", "address", "username", "passwordFile", "passwordEnv"),
        ("driver", "address"),
    )
    driver = fields.get("driver")
    if "driver" in fields and driver not in ("redfish", "ipmi"):
        r.fail((*path, "driver"), f"must be redfish or ipmi, not {driver!r}")
    address = (
        r.text(fields.get("address", ""), (*path, "address"), what="the BMC's address")
        if "address" in fields
        else ""
    )
    return Bmc(
        str(driver or ""),
        address,
        str(fields.get("username", "")),
        str(fields.get("passwordFile", "")),
        str(fields.get("passwordEnv", "")),
    )
