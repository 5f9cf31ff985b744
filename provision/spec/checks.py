"""The building blocks of the spec's field tables: typed parsers and value checks.

A parser takes ``(ctx, value, mark, keypath)`` and returns the converted value, or
:data:`INVALID` after recording a located problem on ``ctx``; :func:`p_obj` makes one from a
table mapping each YAML key to ``(attribute, parser)`` (see :mod:`provision.spec.fields`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from provision.errors import Problem
from provision.reference import ImageRef, InvalidReferenceError
from provision.spec.source import Mark, YamlList, YamlMap

INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "INVALID"})()

MAX_STRING = 64 * 1024
MAX_CMDLINE = 4096
MAX_CONTENTS = 4 * 1024 * 1024
MAX_NAME = 64
MAX_ITEMS = 4096
MAX_PATH = 4096

CAPABILITIES = tuple(
    "CAP_" + name
    for name in [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
)
RLIMITS = tuple(
    "RLIMIT_" + name
    for name in [
        "CPU",
        "FSIZE",
        "DATA",
        "STACK",
        "CORE",
        "RSS",
        "NPROC",
        "NOFILE",
        "MEMLOCK",
        "AS",
        "LOCKS",
        "SIGPENDING",
        "MSGQUEUE",
        "NICE",
        "RTPRIO",
        "RTTIME",
    ]
)
BIND_OPTIONS = frozenset(
    [
        "rw",
        "ro",
        "bind",
        "rbind",
        "shared",
        "rshared",
        "slave",
        "rslave",
        "private",
        "rprivate",
        "unbindable",
        "runbindable",
        "nosuid",
        "suid",
        "nodev",
        "dev",
        "noexec",
        "exec",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "noatime",
        "atime",
        "nodiratime",
        "diratime",
        "sync",
        "async",
        "dirsync",
        "remount",
        "mand",
        "nomand",
        "rro",
        "recursive",
    ]
)
PROPAGATIONS = (
    "shared",
    "slave",
    "private",
    "unbindable",
    "rshared",
    "rslave",
    "rprivate",
    "runbindable",
)
MOUNT_TYPE_FROM_SOURCE = ("mqueue", "devpts", "proc", "sysfs", "cgroup")
DEFAULT_MOUNTPOINTS = {
    "proc": "/proc",
    "devpts": "/dev/pts",
    "sysfs": "/sys",
    "cgroup": "/sys/fs/cgroup",
    "mqueue": "/dev/mqueue",
}

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
VOLUME_NAME_RE = re.compile(r"[a-z0-9_-]*")
ENV_RE = re.compile(r"[^=\0]+=[^\0]*", re.S)
SYSCTL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
HOSTNAME_RE = re.compile(
    r"(?=.{1,64}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
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


def p_list(
    item: Parser, max_items: int = MAX_ITEMS, check: Callable[..., bool] | None = None
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
        ctx.err(mark, key, f'bad mode {value!r}: an octal string such as "0644"')
        return False
    return True


def check_relative_name(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    if not value or value.startswith("/") or ".." in value.split("/"):
        ctx.err(mark, key, f"bad file name {value!r}: a path inside the kernel image")
        return False
    return True


def check_optional_relative_name(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    """``kernel.ucode: ""`` means no microcode, as in LinuxKit (as does leaving it out)."""
    return value == "" or check_relative_name(ctx, value, mark, key)


def check_mount_destination(ctx: Ctx, value: str, mark: Mark, key: str) -> bool:
    """An absolute path, or (as LinuxKit and runc accept) one relative to the container's
    root, e.g. ``writeable-host-etc``; ``..`` may not climb out of it."""
    if value.startswith("/"):
        return True
    if not value or ".." in value.split("/"):
        ctx.err(
            mark,
            key,
            f"bad path {value!r}: an absolute path, or one inside the container's root (no '..')",
        )
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
    "abs": check_abs_path,
    "name": check_name,
    "image_ref": check_image_ref,
    "capability": check_capability,
    "cap_name": check_capability_name,
    "rlimit": check_rlimit,
    "bind": check_bind,
    "tmpfs": check_tmpfs,
    "env": check_env,
    "hostname": check_hostname,
    "cgroups_path": check_cgroups_path,
    "mode": check_mode,
    "relative": check_relative_name,
    "optional_relative": check_optional_relative_name,
    "container_path": check_mount_destination,
    "cmdline": check_cmdline,
    "platform": check_platform,
    "files_path": check_files_path,
    "ns": _namespace_check(False),
    "net_ns": _namespace_check(True),
}

ABS = p_str(MAX_PATH, "abs")
STRINGS = p_list(p_str())
