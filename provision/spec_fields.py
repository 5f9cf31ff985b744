"""The image spec's fields: frozen dataclasses, one table per object, and the checks.

Each table maps a YAML key to ``(attribute, parser)``. A parser takes
``(ctx, value, mark, keypath)`` and returns the converted value, or :data:`INVALID` after
recording a located problem on ``ctx``. One table drives parsing, unknown-key errors (with a
"did you mean"), the canonical dump (``YAML_KEYS`` on each dataclass) and the label parse.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from provision.errors import Problem
from provision.reference import ImageRef, InvalidReferenceError
from provision.yamlsource import Mark, YamlList, YamlMap

INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "INVALID"})()

MAX_STRING = 64 * 1024
MAX_CMDLINE = 4096
MAX_CONTENTS = 4 * 1024 * 1024
MAX_NAME = 64
MAX_ITEMS = 4096
MAX_PATH = 4096

CAPABILITIES = tuple("CAP_" + name for name in ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"])
RLIMITS = tuple("RLIMIT_" + name for name in ["CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME"])
BIND_OPTIONS = frozenset(
    ["rw", "ro", "bind", "rbind", "shared", "rshared", "slave", "rslave", "private", "rprivate", "unbindable", "runbindable", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "relatime", "norelatime", "strictatime", "nostrictatime", "noatime", "atime", "nodiratime", "diratime", "sync", "async", "dirsync", "remount", "mand", "nomand", "rro", "recursive"])
PROPAGATIONS = ("shared", "slave", "private", "unbindable", "rshared", "rslave", "rprivate",
                "runbindable")
MOUNT_TYPE_FROM_SOURCE = ("mqueue", "devpts", "proc", "sysfs", "cgroup")
DEFAULT_MOUNTPOINTS = {"proc": "/proc", "devpts": "/dev/pts", "sysfs": "/sys",
                       "cgroup": "/sys/fs/cgroup", "mqueue": "/dev/mqueue"}

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
VOLUME_NAME_RE = re.compile(r"[a-z0-9_-]*")
ENV_RE = re.compile(r"[^=\0]+=[^\0]*", re.S)
SYSCTL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
HOSTNAME_RE = re.compile(r"(?=.{1,64}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                         r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
MODE_RE = re.compile(r"0?[0-7]{1,4}")
PLATFORM_RE = re.compile(r"[a-z0-9_]+/[a-z0-9_]+(?:/[a-z0-9_]+)?")

Parser = Callable[["Ctx", Any, Mark, str], Any]


class Ctx:
    """Problems found so far, and the directory ``files`` sources are relative to."""

    def __init__(self, file: str, base_dir: Path | None) -> None:
        self.file = file
        self.base_dir = base_dir
        self.problems: list[Problem] = []

    def err(self, mark: Mark, key: str, message: str) -> Any:
        self.problems.append(mark.problem(key, message))
        return INVALID

    def unknown_key(self, mark: Mark, path: str, key: str, known: Iterable[str]) -> None:
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.err(mark, path, f"unknown key {key!r}{hint}")


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# --- parsers ----------------------------------------------------------------------------------

Check = Callable[["Ctx", str, Mark, str], bool]


def p_str(max_len: int = MAX_STRING, check: str | Check | None = None) -> Parser:
    def parse(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
        if not isinstance(value, str):
            return ctx.err(mark, key, f"must be a string, not {type_name(value)}")
        if len(value.encode("utf-8", "surrogatepass")) > max_len:
            return ctx.err(mark, key, f"longer than {max_len} bytes")
        if "\0" in value:
            return ctx.err(mark, key, "contains a NUL character")
        fn = CHECKS[check] if isinstance(check, str) else check
        if fn is not None and not fn(ctx, value, mark, key):
            return INVALID
        return value
    return parse


def p_bool(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
    if not isinstance(value, bool):
        return ctx.err(mark, key, f"must be true or false, not {type_name(value)}")
    return value


def p_int(low: int = -(2**63), high: int = 2**64 - 1) -> Parser:
    def parse(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return ctx.err(mark, key, f"must be an integer, not {type_name(value)}")
        if not low <= value <= high:
            return ctx.err(mark, key, f"must be between {low} and {high}")
        return value
    return parse


def p_id(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
    """A uid or gid: a number, or a name (resolved later)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2**32:
            return ctx.err(mark, key, "must be between 0 and 4294967295")
        return value
    if isinstance(value, str) and value and len(value) <= MAX_NAME and "\0" not in value:
        return value
    return ctx.err(mark, key, f"must be a number or a name, not {type_name(value)}")


def p_enum(*choices: str) -> Parser:
    def parse(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
        if value not in choices:
            want = ", ".join(choices)
            return ctx.err(mark, key, f"must be one of {want}, not {type_name(value)}")
        return value
    return parse


def p_list(item: Parser, max_items: int = MAX_ITEMS, check: Callable[..., bool] | None = None
           ) -> Parser:
    def parse(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
        if not isinstance(value, list):
            return ctx.err(mark, key, f"must be a list, not {type_name(value)}")
        if len(value) > max_items:
            return ctx.err(mark, key, f"more than {max_items} items")
        marks = value.item_mark if isinstance(value, YamlList) else (lambda _i: mark)
        out = [item(ctx, v, marks(i), f"{key}[{i}]") for i, v in enumerate(value)]
        if any(v is INVALID for v in out):
            return INVALID
        if check is not None and not check(ctx, out, mark, key, value):
            return INVALID
        return tuple(out)
    return parse


def p_map(key_check: Check | None = None, max_items: int = MAX_ITEMS) -> Parser:
    """A mapping of strings to strings."""
    def parse(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
        if not isinstance(value, dict):
            return ctx.err(mark, key, f"must be a mapping, not {type_name(value)}")
        if len(value) > max_items:
            return ctx.err(mark, key, f"more than {max_items} entries")
        ok = True
        out: dict[str, str] = {}
        for name, item in value.items():
            where = value.value_mark(name) if isinstance(value, YamlMap) else mark
            if key_check is not None and not key_check(ctx, name, where, f"{key}.{name}"):
                ok = False
                continue
            parsed = p_str()(ctx, item, where, f"{key}.{name}")
            if parsed is INVALID:
                ok = False
            out[name] = parsed
        return out if ok else INVALID
    return parse


Table = dict[str, tuple[str, Parser]]


def p_obj(table: Table, build: Callable[..., Any], required: tuple[str, ...] = ()) -> Parser:
    """A mapping with the keys of ``table``; ``build(**{attr: value})`` makes the result."""
    def parse(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
        if not isinstance(value, dict):
            return ctx.err(mark, key, f"must be a mapping, not {type_name(value)}")
        ok = True
        kwargs: dict[str, Any] = {}
        for name, item in value.items():
            path = f"{key}.{name}" if key else name
            entry = table.get(name)
            if entry is None:
                where = value.key_mark(name) if isinstance(value, YamlMap) else mark
                ctx.unknown_key(where, path, name, table)
                ok = False
                continue
            where = value.value_mark(name) if isinstance(value, YamlMap) else mark
            parsed = entry[1](ctx, item, where, path)
            if parsed is INVALID:
                ok = False
            else:
                kwargs[entry[0]] = parsed
        for name in required:
            if name not in value:
                ctx.err(mark, key, f"missing required key {name!r}")
                ok = False
        return build(**kwargs) if ok else INVALID
    return parse


# --- checks on strings --------------------------------------------------------------------------

def check_abs_path(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if not value.startswith("/"):
        ctx.err(mark, key, f"must be an absolute path, not {value!r}")
        return False
    return True


def check_name(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if len(value) > MAX_NAME:
        ctx.err(mark, key, f"name longer than {MAX_NAME} characters")
        return False
    if not NAME_RE.fullmatch(value):
        ctx.err(mark, key, f"bad name {value!r}: use letters, digits, '_', '.', '-'")
        return False
    return True


def check_image_ref(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    try:
        ImageRef.parse(value)
    except InvalidReferenceError as exc:
        ctx.err(mark, key, f"invalid image reference {value!r}: {exc.reason}")
        return False
    return True


def _cap_keyword(value: str) -> bool:
    return value.lower() in ("all", "none")


def check_capability(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if value in CAPABILITIES or _cap_keyword(value):
        return True
    close = difflib.get_close_matches(value.upper(), CAPABILITIES, n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]}?)" if close else ""
    ctx.err(mark, key, f"unknown capability {value!r}{hint}")
    return False


def check_capability_name(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if _cap_keyword(value):
        ctx.err(mark, key, f"{value!r} is not allowed in an .add list (name capabilities)")
        return False
    return check_capability(ctx, value, mark, key)


def check_cap_list(ctx: Ctx, caps: list[str], mark: Mark, key: str, raw: Any) -> bool:
    if len(caps) > 1:
        for i, cap in enumerate(caps):
            if _cap_keyword(cap):
                where = raw.item_mark(i) if isinstance(raw, YamlList) else mark
                ctx.err(where, f"{key}[{i}]", f"{cap!r} must be the only item of the list")
                return False
    return True


def check_rlimit(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    parts = value.split(",")
    if len(parts) != 3:
        ctx.err(mark, key, f"bad rlimit {value!r}: want NAME,SOFT,HARD (e.g. nofile,1024,4096)")
        return False
    name = parts[0].strip().upper()
    if not name.startswith("RLIMIT_"):
        name = "RLIMIT_" + name
    if name not in RLIMITS:
        ctx.err(mark, key, f"unknown rlimit {parts[0].strip()!r}")
        return False
    limits = []
    for part in parts[1:]:
        text = part.strip().lower()
        if text == "unlimited":
            limits.append(2**64 - 1)
        elif text.isdigit() and int(text) < 2**64:
            limits.append(int(text))
        else:
            ctx.err(mark, key, f"bad rlimit value {part.strip()!r}: a number or unlimited")
            return False
    if limits[0] > limits[1]:
        ctx.err(mark, key, f"rlimit {value!r}: soft limit above hard limit")
        return False
    return True


def parse_rlimit(text: str) -> dict[str, Any]:
    """``"nofile,100,200"`` as an OCI POSIXRlimit (the text was checked already)."""
    parts = [p.strip() for p in text.split(",")]
    name = parts[0].upper()
    if not name.startswith("RLIMIT_"):
        name = "RLIMIT_" + name
    soft, hard = (2**64 - 1 if p.lower() == "unlimited" else int(p) for p in parts[1:])
    return {"type": name, "soft": soft, "hard": hard}


def _namespace_check(allow_none: bool) -> Check:
    def check(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
        words = ("host", "root", "new") + (("none",) if allow_none else ())
        if value in words or value.startswith("/"):
            return True
        ctx.err(mark, key, f"bad namespace {value!r}: {', '.join(words)} or a path")
        return False
    return check


def check_bind(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    parts = value.split(":")
    if len(parts) < 2 or len(parts) > 3:
        ctx.err(mark, key, f"bad bind {value!r}: want SOURCE:DESTINATION[:OPTIONS]")
        return False
    source, dest = parts[0], parts[1]
    if not source.startswith("/") and not (source and VOLUME_NAME_RE.fullmatch(source)):
        ctx.err(mark, key, f"bad bind source {source!r}: an absolute path or a volume name")
        return False
    if not dest.startswith("/"):
        ctx.err(mark, key, f"bad bind destination {dest!r}: must be an absolute path")
        return False
    if len(parts) == 3:
        for option in parts[2].split(","):
            if option not in BIND_OPTIONS:
                ctx.err(mark, key, f"bad bind option {option!r} in {value!r}")
                return False
    return True


def check_tmpfs(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    parts = value.split(":")
    if len(parts) > 2:
        ctx.err(mark, key, f"bad tmpfs {value!r}: want DESTINATION[:OPTIONS]")
        return False
    if not parts[0].startswith("/"):
        ctx.err(mark, key, f"bad tmpfs destination {parts[0]!r}: must be an absolute path")
        return False
    if len(parts) == 2 and any(not option for option in parts[1].split(",")):
        ctx.err(mark, key, f"bad tmpfs options in {value!r}")
        return False
    return True


def check_env(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if not ENV_RE.fullmatch(value):
        ctx.err(mark, key, f"bad env {value!r}: want NAME=VALUE")
        return False
    return True


def check_hostname(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if not HOSTNAME_RE.fullmatch(value):
        ctx.err(mark, key, f"bad hostname {value!r}")
        return False
    return True


def check_cgroups_path(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if not value or ".." in value.split("/") or ":" in value:
        ctx.err(mark, key, f"bad cgroupsPath {value!r}: a path like /services/web, no '..'")
        return False
    return True


def check_sysctl_key(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if not SYSCTL_RE.fullmatch(value) or ".." in value:
        ctx.err(mark, key, f"bad sysctl name {value!r}")
        return False
    return True


def check_mode(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if not MODE_RE.fullmatch(value):
        ctx.err(mark, key, f"bad mode {value!r}: an octal string such as \"0644\"")
        return False
    return True


def check_relative_name(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if not value or value.startswith("/") or ".." in value.split("/"):
        ctx.err(mark, key, f"bad file name {value!r}: a path inside the kernel image")
        return False
    return True


def check_cmdline(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if len(value.encode()) > MAX_CMDLINE:
        ctx.err(mark, key, f"kernel command line longer than {MAX_CMDLINE} bytes")
        return False
    if "\n" in value.strip():
        ctx.err(mark, key, "kernel command line contains a newline")
        return False
    return True


def check_platform(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if not PLATFORM_RE.fullmatch(value):
        ctx.err(mark, key, f"bad platform {value!r}: want os/arch[/variant], e.g. linux/amd64")
        return False
    return True


def check_files_path(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    parts = [p for p in value.split("/") if p not in ("", ".")]
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            ctx.err(mark, key, f"path {value!r} leaves the image root")
            return False
    if depth == 0:
        ctx.err(mark, key, f"path {value!r} names the image root itself")
        return False
    return True


CHECKS: dict[str, Check] = {
    "abs": check_abs_path, "name": check_name, "image_ref": check_image_ref,
    "capability": check_capability, "cap_name": check_capability_name,
    "rlimit": check_rlimit, "bind": check_bind, "tmpfs": check_tmpfs, "env": check_env,
    "hostname": check_hostname, "cgroups_path": check_cgroups_path, "mode": check_mode,
    "relative": check_relative_name, "cmdline": check_cmdline, "platform": check_platform,
    "files_path": check_files_path, "ns": _namespace_check(False),
    "net_ns": _namespace_check(True),
}

ABS = p_str(MAX_PATH, "abs")
STRINGS = p_list(p_str())


# --- dataclasses ------------------------------------------------------------------------------

def _yaml_keys(table: Table) -> dict[str, str]:
    return {attr: yaml_key for yaml_key, (attr, _) in table.items()}


@dataclass(frozen=True)
class KernelSpec:
    image: str
    cmdline: str = ""
    binary: str = "kernel"
    tar: str | None = "kernel.tar"
    ucode: str | None = None


KERNEL_TABLE: Table = {
    "image": ("image", p_str(check="image_ref")),
    "cmdline": ("cmdline", p_str(check="cmdline")),
    "binary": ("binary", p_str(MAX_PATH, "relative")),
    "tar": ("tar", p_str(MAX_PATH, "relative")),
    "ucode": ("ucode", p_str(MAX_PATH, "relative")),
}


@dataclass(frozen=True)
class IDMapping:
    host_id: int | None = None
    container_id: int | None = None
    size: int | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {"host_id": "hostID", "container_id": "containerID",
                                           "size": "size"}


UINT32 = p_int(0, 2**32 - 1)
IDMAPS = p_list(p_obj({"hostID": ("host_id", UINT32), "containerID": ("container_id", UINT32),
                       "size": ("size", UINT32)}, IDMapping))


@dataclass(frozen=True)
class Mount:
    destination: str | None = None
    type: str | None = None
    source: str | None = None
    options: tuple[str, ...] | None = None
    uidmappings: tuple[IDMapping, ...] | None = None
    gidmappings: tuple[IDMapping, ...] | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {n: n for n in (
        "destination", "type", "source", "options", "uidmappings", "gidmappings")}


def _build_mount(**kwargs: Any) -> Any:
    return Mount(**kwargs)


MOUNT_TABLE: Table = {
    "destination": ("destination", ABS), "type": ("type", p_str(256)),
    "source": ("source", p_str(MAX_PATH)), "options": ("options", STRINGS),
    "uidmappings": ("uidmappings", IDMAPS), "gidmappings": ("gidmappings", IDMAPS),
}


def check_mount(ctx: Ctx, mounts: list[Mount], mark: Mark, key: str, raw: Any) -> bool:
    ok = True
    for i, mount in enumerate(mounts):
        where = raw.item_mark(i) if isinstance(raw, YamlList) else mark
        kind = mount.type or (mount.source if mount.source in MOUNT_TYPE_FROM_SOURCE else None)
        if kind is None and mount.destination == "/dev":
            kind = "tmpfs"
        if kind is None:
            ok = ctx.err(where, f"{key}[{i}]", "mount has no type (and none follows from "
                                               "its source)") and False
            continue
        if not mount.destination and kind not in DEFAULT_MOUNTPOINTS:
            ok = ctx.err(where, f"{key}[{i}]", f"{kind} mount has no destination") and False
    return ok


MOUNTS = p_list(p_obj(MOUNT_TABLE, _build_mount), check=check_mount)


@dataclass(frozen=True)
class Device:
    path: str
    type: str | None = None
    major: int | None = None
    minor: int | None = None
    mode: str | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {n: n for n in ("path", "type", "major", "minor",
                                                         "mode")}


def _device_checked(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
    device = p_obj({"path": ("path", p_str(MAX_PATH)), "type": ("type", p_enum("c", "b", "u",
                                                                               "p", "a")),
                    "major": ("major", p_int(-1, 2**32 - 1)),
                    "minor": ("minor", p_int(-1, 2**32 - 1)),
                    "mode": ("mode", p_str(16, "mode"))}, Device, ("path",))(ctx, value, mark,
                                                                              key)
    if device is INVALID:
        return INVALID
    if device.path == "all":
        if device.type not in ("a", "b", "c"):
            return ctx.err(mark, key, "path: all needs type a, b or c")
        return device
    if not device.path.startswith("/"):
        return ctx.err(mark, f"{key}.path", f"must be an absolute path or all, not "
                                            f"{device.path!r}")
    missing = [n for n in ("type", "major", "minor", "mode") if getattr(device, n) is None]
    if missing:
        return ctx.err(mark, key, f"device {device.path} needs {', '.join(missing)}")
    if device.type == "a":
        return ctx.err(mark, f"{key}.type", "type a is only for path: all")
    return device


def _dict(**kwargs: Any) -> dict[str, Any]:
    return dict(kwargs)


def _ints(*names: str, low: int = -(2**63)) -> Table:
    return {n: (n, p_int(low)) for n in names}


_THROTTLE = p_list(p_obj(_ints("major", "minor", "rate", low=0), _dict))
RESOURCES = p_obj({
    "devices": ("devices", p_list(p_obj({
        "allow": ("allow", p_bool), "type": ("type", p_enum("a", "b", "c")),
        "major": ("major", p_int(-1)), "minor": ("minor", p_int(-1)),
        "access": ("access", p_str(3))}, _dict))),
    "memory": ("memory", p_obj({**_ints("limit", "reservation", "swap", "kernel", "kernelTCP"),
                                "swappiness": ("swappiness", p_int(0, 100)),
                                "disableOOMKiller": ("disableOOMKiller", p_bool)}, _dict)),
    "cpu": ("cpu", p_obj({**_ints("shares", "quota", "period", "realtimeRuntime",
                                  "realtimePeriod"),
                          "cpus": ("cpus", p_str(256)), "mems": ("mems", p_str(256))}, _dict)),
    "pids": ("pids", p_obj(_ints("limit"), _dict)),
    "blockio": ("blockio", p_obj({
        **_ints("weight", "leafWeight", low=0),
        "weightDevice": ("weightDevice", p_list(p_obj(_ints("major", "minor", "weight",
                                                            "leafWeight", low=0), _dict))),
        **{n: (n, _THROTTLE) for n in ("throttleReadBpsDevice", "throttleWriteBpsDevice",
                                       "throttleReadIOPSDevice", "throttleWriteIOPSDevice")},
    }, _dict)),
    "hugepageLimits": ("hugepageLimits", p_list(p_obj(
        {"pageSize": ("pageSize", p_str(32)), "limit": ("limit", p_int(0))}, _dict))),
    "network": ("network", p_obj({"classID": ("classID", p_int(0, 2**32 - 1)),
                                  "priorities": ("priorities", p_list(p_obj(
                                      {"name": ("name", p_str(64)),
                                       "priority": ("priority", p_int(0, 2**32 - 1))},
                                      _dict)))}, _dict)),
}, _dict)


@dataclass(frozen=True)
class Interface:
    name: str | None = None
    add: str | None = None
    peer: str | None = None
    create_in_root: bool | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {"name": "name", "add": "add", "peer": "peer",
                                           "create_in_root": "createInRoot"}


@dataclass(frozen=True)
class BindNamespaces:
    cgroup: str | None = None
    ipc: str | None = None
    mnt: str | None = None
    net: str | None = None
    pid: str | None = None
    user: str | None = None
    uts: str | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {n: n for n in ("cgroup", "ipc", "mnt", "net", "pid",
                                                         "user", "uts")}


@dataclass(frozen=True)
class RuntimeActions:
    """``runtime``: what init does around a container at boot (not in config.json)."""

    cgroups: tuple[str, ...] | None = None
    mounts: tuple[Mount, ...] | None = None
    mkdir: tuple[str, ...] | None = None
    interfaces: tuple[Interface, ...] | None = None
    bind_ns: BindNamespaces | None = None
    namespace: str | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {"cgroups": "cgroups", "mounts": "mounts",
                                           "mkdir": "mkdir", "interfaces": "interfaces",
                                           "bind_ns": "bindNS", "namespace": "namespace"}


RUNTIME = p_obj({
    "cgroups": ("cgroups", p_list(p_str(256, "cgroups_path"))),
    "mounts": ("mounts", MOUNTS),
    "mkdir": ("mkdir", p_list(ABS)),
    "interfaces": ("interfaces", p_list(p_obj({
        "name": ("name", p_str(15)), "add": ("add", p_str(64)), "peer": ("peer", p_str(15)),
        "createInRoot": ("create_in_root", p_bool)}, Interface))),
    "bindNS": ("bind_ns", p_obj({n: (n, ABS) for n in BindNamespaces.YAML_KEYS},
                                BindNamespaces)),
    "namespace": ("namespace", p_str(MAX_PATH)),
}, RuntimeActions)

CAPS = p_list(p_str(64, "capability"), check=check_cap_list)
CAPS_ADD = p_list(p_str(64, "cap_name"))
BINDS = p_list(p_str(MAX_PATH * 2 + 256, "bind"))

IMAGE_CONFIG_TABLE: Table = {
    "capabilities": ("capabilities", CAPS),
    "capabilities.add": ("capabilities_add", CAPS_ADD),
    "ambient": ("ambient", CAPS),
    "mounts": ("mounts", MOUNTS),
    "binds": ("binds", BINDS),
    "binds.add": ("binds_add", BINDS),
    "devices": ("devices", p_list(_device_checked)),
    "tmpfs": ("tmpfs", p_list(p_str(MAX_PATH + 256, "tmpfs"))),
    "command": ("command", p_list(p_str(), check=lambda ctx, items, mark, key, _raw: bool(
        items) or ctx.err(mark, key, "command is empty") is None)),
    "env": ("env", p_list(p_str(check="env"))),
    "cwd": ("cwd", ABS),
    "net": ("net", p_str(MAX_PATH, "net_ns")),
    "pid": ("pid", p_str(MAX_PATH, "ns")),
    "ipc": ("ipc", p_str(MAX_PATH, "ns")),
    "uts": ("uts", p_str(MAX_PATH, "ns")),
    "userns": ("userns", p_str(MAX_PATH, "ns")),
    "hostname": ("hostname", p_str(64, "hostname")),
    "readonly": ("readonly", p_bool),
    "maskedPaths": ("masked_paths", p_list(ABS)),
    "readonlyPaths": ("readonly_paths", p_list(ABS)),
    "uid": ("uid", p_id),
    "gid": ("gid", p_id),
    "additionalGids": ("additional_gids", p_list(p_id, 64)),
    "noNewPrivileges": ("no_new_privileges", p_bool),
    "oomScoreAdj": ("oom_score_adj", p_int(-1000, 1000)),
    "rootfsPropagation": ("rootfs_propagation", p_enum(*PROPAGATIONS)),
    "cgroupsPath": ("cgroups_path", p_str(MAX_PATH, "cgroups_path")),
    "resources": ("resources", RESOURCES),
    "sysctl": ("sysctl", p_map(check_sysctl_key)),
    "rlimits": ("rlimits", p_list(p_str(256, "rlimit"))),
    "uidMappings": ("uid_mappings", IDMAPS),
    "gidMappings": ("gid_mappings", IDMAPS),
    "annotations": ("annotations", p_map()),
    "runtime": ("runtime", RUNTIME),
}


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """Every optional field of an image entry (None when unset): the part an image's
    ``org.mobyproject.config`` label may also set."""

    capabilities: tuple[str, ...] | None = None
    capabilities_add: tuple[str, ...] | None = None
    ambient: tuple[str, ...] | None = None
    mounts: tuple[Mount, ...] | None = None
    binds: tuple[str, ...] | None = None
    binds_add: tuple[str, ...] | None = None
    devices: tuple[Device, ...] | None = None
    tmpfs: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    env: tuple[str, ...] | None = None
    cwd: str | None = None
    net: str | None = None
    pid: str | None = None
    ipc: str | None = None
    uts: str | None = None
    userns: str | None = None
    hostname: str | None = None
    readonly: bool | None = None
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None
    uid: int | str | None = None
    gid: int | str | None = None
    additional_gids: tuple[int | str, ...] | None = None
    no_new_privileges: bool | None = None
    oom_score_adj: int | None = None
    rootfs_propagation: str | None = None
    cgroups_path: str | None = None
    resources: dict[str, Any] | None = None
    sysctl: dict[str, str] | None = None
    rlimits: tuple[str, ...] | None = None
    uid_mappings: tuple[IDMapping, ...] | None = None
    gid_mappings: tuple[IDMapping, ...] | None = None
    annotations: dict[str, str] | None = None
    runtime: RuntimeActions | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = _yaml_keys(IMAGE_CONFIG_TABLE)


@dataclass(frozen=True, kw_only=True)
class ImageEntry(ImageConfig):
    """One onboot, onshutdown or service container: ``name``, ``image`` and its config."""

    name: str
    image: str
    YAML_KEYS: ClassVar[dict[str, str]] = {"name": "name", "image": "image",
                                           **_yaml_keys(IMAGE_CONFIG_TABLE)}


IMAGE_ENTRY_TABLE: Table = {
    "name": ("name", p_str(1024, "name")),
    "image": ("image", p_str(1024, "image_ref")),
    **IMAGE_CONFIG_TABLE,
}

parse_image_entry = p_obj(IMAGE_ENTRY_TABLE, ImageEntry, ("name", "image"))
parse_image_config = p_obj(IMAGE_CONFIG_TABLE, ImageConfig)


def table_yaml_keys() -> tuple[str, ...]:
    return tuple(IMAGE_ENTRY_TABLE)


@dataclass(frozen=True)
class FileEntry:
    """One ``files`` entry. ``source`` is the resolved host path (``~/`` expanded, relative
    to the spec file's directory); ``source_as_written`` keeps the text for the dump."""

    path: str
    directory: bool = False
    symlink: str | None = None
    contents: str | None = None
    source: str | None = None
    metadata: str | None = None
    optional: bool = False
    mode: str | None = None
    uid: int | str | None = None
    gid: int | str | None = None
    source_as_written: str | None = field(default=None, compare=False, repr=False)


FILE_TABLE: Table = {
    "path": ("path", p_str(MAX_PATH, "files_path")),
    "directory": ("directory", p_bool),
    "symlink": ("symlink", p_str(MAX_PATH)),
    "contents": ("contents", p_str(MAX_CONTENTS)),
    "source": ("source", p_str(MAX_PATH)),
    "metadata": ("metadata", p_enum("yaml", "json")),
    "optional": ("optional", p_bool),
    "mode": ("mode", p_str(16, "mode")),
    "uid": ("uid", p_id),
    "gid": ("gid", p_id),
}
CONTENT_KINDS = ("directory", "symlink", "contents", "source", "metadata")


def parse_file_entry(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
    if isinstance(value, dict) and isinstance(value.get("mode"), int) and not isinstance(
            value.get("mode"), bool):
        where = value.value_mark("mode") if isinstance(value, YamlMap) else mark
        return ctx.err(where, f"{key}.mode", "mode must be a quoted octal string such as "
                                             "\"0644\" (YAML reads 0644 as a number)")
    entry = p_obj(FILE_TABLE, FileEntry, ("path",))(ctx, value, mark, key)
    if entry is INVALID:
        return INVALID
    return check_file_entry(ctx, entry, mark, key)


def check_file_entry(ctx: Ctx, entry: FileEntry, mark: Mark, key: str) -> Any:
    kinds = [k for k in CONTENT_KINDS
             if (getattr(entry, k) is True if k == "directory" else getattr(entry, k) is not None)]
    if len(kinds) != 1:
        have = " and ".join(kinds) if kinds else "none of them"
        return ctx.err(mark, key, f"{entry.path}: give exactly one of directory, symlink, "
                                  f"contents, source, metadata (has {have})")
    if entry.optional and entry.source is None:
        return ctx.err(mark, key, f"{entry.path}: optional applies only to source")
    if entry.source is None:
        return entry
    if not entry.source:
        return ctx.err(mark, f"{key}.source", "source is empty")
    written = entry.source
    resolved = Path(os.path.expanduser(written))
    if not resolved.is_absolute():
        resolved = (ctx.base_dir or Path.cwd()) / resolved
    if not entry.optional:
        if not resolved.exists():
            return ctx.err(mark, f"{key}.source", f"source {written!r} does not exist "
                                                  f"({resolved})")
        if not resolved.is_file():
            return ctx.err(mark, f"{key}.source", f"source {written!r} is not a regular file")
    return FileEntry(entry.path, entry.directory, entry.symlink, entry.contents, str(resolved),
                     entry.metadata, entry.optional, entry.mode, entry.uid, entry.gid,
                     source_as_written=written)


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    image: str | None = None
    readonly: bool = False
    format: str = "filesystem"
    platforms: tuple[str, ...] = ()


def check_volume_name(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if not value or not VOLUME_NAME_RE.fullmatch(value) or len(value) > MAX_NAME:
        ctx.err(mark, key, f"bad volume name {value!r}: lowercase letters, digits, '_', '-'")
        return False
    return True


parse_volume = p_obj({
    "name": ("name", p_str(1024, check_volume_name)),
    "image": ("image", p_str(1024, "image_ref")),
    "readonly": ("readonly", p_bool),
    "format": ("format", p_enum("filesystem", "oci")),
    "platforms": ("platforms", p_list(p_str(64, "platform"))),
}, VolumeSpec, ("name",))
