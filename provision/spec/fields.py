"""The image spec's fields: frozen dataclasses and one table per object.

Each table maps a YAML key to ``(attribute, parser)`` (parsers and checks live in
:mod:`provision.spec.checks`). One table drives parsing, unknown-key errors (with a "did you
mean"), the canonical dump (``YAML_KEYS`` on each dataclass) and the label parse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from provision.spec.checks import (
    ABS,
    CAPABILITIES,
    DEFAULT_MOUNTPOINTS,
    INVALID,
    MAX_CONTENTS,
    MAX_NAME,
    MAX_PATH,
    MOUNT_TYPE_FROM_SOURCE,
    PROPAGATIONS,
    RLIMITS,
    STRINGS,
    VOLUME_NAME_RE,
    Ctx,
    Table,
    check_cap_list,
    check_sysctl_key,
    p_bool,
    p_enum,
    p_id,
    p_int,
    p_list,
    p_map,
    p_obj,
    p_str,
    parse_rlimit,
    type_name,
)
from provision.spec.source import Mark, YamlList, YamlMap

__all__ = [
    "CAPABILITIES",
    "DEFAULT_MOUNTPOINTS",
    "INVALID",
    "MOUNT_TYPE_FROM_SOURCE",
    "RLIMITS",
    "Ctx",
    "p_list",
    "p_obj",
    "p_str",
    "parse_rlimit",
    "type_name",
]

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
    "ucode": ("ucode", p_str(MAX_PATH, "optional_relative")),
}


@dataclass(frozen=True)
class IDMapping:
    host_id: int | None = None
    container_id: int | None = None
    size: int | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {
        "host_id": "hostID",
        "container_id": "containerID",
        "size": "size",
    }


UINT32 = p_int(0, 2**32 - 1)
IDMAPS = p_list(
    p_obj(
        {
            "hostID": ("host_id", UINT32),
            "containerID": ("container_id", UINT32),
            "size": ("size", UINT32),
        },
        IDMapping,
    )
)


@dataclass(frozen=True)
class Mount:
    destination: str | None = None
    type: str | None = None
    source: str | None = None
    options: tuple[str, ...] | None = None
    uidmappings: tuple[IDMapping, ...] | None = None
    gidmappings: tuple[IDMapping, ...] | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {
        n: n for n in ("destination", "type", "source", "options", "uidmappings", "gidmappings")
    }


def _build_mount(**kwargs: Any) -> Any:
    return Mount(**kwargs)


# mounts' destinations and runtime.mkdir: absolute, or relative to the container's root
CONTAINER_PATH = p_str(MAX_PATH, "container_path")

MOUNT_TABLE: Table = {
    "destination": ("destination", CONTAINER_PATH),
    "type": ("type", p_str(256)),
    "source": ("source", p_str(MAX_PATH)),
    "options": ("options", STRINGS),
    "uidmappings": ("uidmappings", IDMAPS),
    "gidmappings": ("gidmappings", IDMAPS),
}


def check_mount(ctx: Ctx, mounts: list[Mount], mark: Mark, key: str, raw: Any) -> bool:
    ok = True
    for i, mount in enumerate(mounts):
        where = raw.item_mark(i) if isinstance(raw, YamlList) else mark
        kind = mount.type or (mount.source if mount.source in MOUNT_TYPE_FROM_SOURCE else None)
        if kind is None and mount.destination == "/dev":
            kind = "tmpfs"
        if kind is None:
            ok = (
                ctx.err(
                    where, f"{key}[{i}]", "mount has no type (and none follows from its source)"
                )
                and False
            )
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
    YAML_KEYS: ClassVar[dict[str, str]] = {n: n for n in ("path", "type", "major", "minor", "mode")}


def _device_checked(ctx: Ctx, value: Any, mark: Mark, key: str) -> Any:
    device = p_obj(
        {
            "path": ("path", p_str(MAX_PATH)),
            "type": ("type", p_enum("c", "b", "u", "p", "a")),
            "major": ("major", p_int(-1, 2**32 - 1)),
            "minor": ("minor", p_int(-1, 2**32 - 1)),
            "mode": ("mode", p_str(16, "mode")),
        },
        Device,
        ("path",),
    )(ctx, value, mark, key)
    if device is INVALID:
        return INVALID
    if device.path == "all":
        if device.type not in ("a", "b", "c"):
            return ctx.err(mark, key, "path: all needs type a, b or c")
        return device
    if not device.path.startswith("/"):
        return ctx.err(mark, f"{key}.path", f"must be an absolute path or all, not {device.path!r}")
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
RESOURCES = p_obj(
    {
        "devices": (
            "devices",
            p_list(
                p_obj(
                    {
                        "allow": ("allow", p_bool),
                        "type": ("type", p_enum("a", "b", "c")),
                        "major": ("major", p_int(-1)),
                        "minor": ("minor", p_int(-1)),
                        "access": ("access", p_str(3)),
                    },
                    _dict,
                )
            ),
        ),
        "memory": (
            "memory",
            p_obj(
                {
                    **_ints("limit", "reservation", "swap", "kernel", "kernelTCP"),
                    "swappiness": ("swappiness", p_int(0, 100)),
                    "disableOOMKiller": ("disableOOMKiller", p_bool),
                },
                _dict,
            ),
        ),
        "cpu": (
            "cpu",
            p_obj(
                {
                    **_ints("shares", "quota", "period", "realtimeRuntime", "realtimePeriod"),
                    "cpus": ("cpus", p_str(256)),
                    "mems": ("mems", p_str(256)),
                },
                _dict,
            ),
        ),
        "pids": ("pids", p_obj(_ints("limit"), _dict)),
        "blockio": (
            "blockio",
            p_obj(
                {
                    **_ints("weight", "leafWeight", low=0),
                    "weightDevice": (
                        "weightDevice",
                        p_list(
                            p_obj(_ints("major", "minor", "weight", "leafWeight", low=0), _dict)
                        ),
                    ),
                    **{
                        n: (n, _THROTTLE)
                        for n in (
                            "throttleReadBpsDevice",
                            "throttleWriteBpsDevice",
                            "throttleReadIOPSDevice",
                            "throttleWriteIOPSDevice",
                        )
                    },
                },
                _dict,
            ),
        ),
        "hugepageLimits": (
            "hugepageLimits",
            p_list(
                p_obj({"pageSize": ("pageSize", p_str(32)), "limit": ("limit", p_int(0))}, _dict)
            ),
        ),
        "network": (
            "network",
            p_obj(
                {
                    "classID": ("classID", p_int(0, 2**32 - 1)),
                    "priorities": (
                        "priorities",
                        p_list(
                            p_obj(
                                {
                                    "name": ("name", p_str(64)),
                                    "priority": ("priority", p_int(0, 2**32 - 1)),
                                },
                                _dict,
                            )
                        ),
                    ),
                },
                _dict,
            ),
        ),
    },
    _dict,
)


@dataclass(frozen=True)
class Interface:
    name: str | None = None
    add: str | None = None
    peer: str | None = None
    create_in_root: bool | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {
        "name": "name",
        "add": "add",
        "peer": "peer",
        "create_in_root": "createInRoot",
    }


@dataclass(frozen=True)
class BindNamespaces:
    cgroup: str | None = None
    ipc: str | None = None
    mnt: str | None = None
    net: str | None = None
    pid: str | None = None
    user: str | None = None
    uts: str | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {
        n: n for n in ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")
    }


@dataclass(frozen=True)
class RuntimeActions:
    """``runtime``: what init does around a container at boot (not in config.json)."""

    cgroups: tuple[str, ...] | None = None
    mounts: tuple[Mount, ...] | None = None
    mkdir: tuple[str, ...] | None = None
    interfaces: tuple[Interface, ...] | None = None
    bind_ns: BindNamespaces | None = None
    namespace: str | None = None
    YAML_KEYS: ClassVar[dict[str, str]] = {
        "cgroups": "cgroups",
        "mounts": "mounts",
        "mkdir": "mkdir",
        "interfaces": "interfaces",
        "bind_ns": "bindNS",
        "namespace": "namespace",
    }


RUNTIME = p_obj(
    {
        "cgroups": ("cgroups", p_list(p_str(256, "cgroups_path"))),
        "mounts": ("mounts", MOUNTS),
        "mkdir": ("mkdir", p_list(CONTAINER_PATH)),
        "interfaces": (
            "interfaces",
            p_list(
                p_obj(
                    {
                        "name": ("name", p_str(15)),
                        "add": ("add", p_str(64)),
                        "peer": ("peer", p_str(15)),
                        "createInRoot": ("create_in_root", p_bool),
                    },
                    Interface,
                )
            ),
        ),
        "bindNS": (
            "bind_ns",
            p_obj({n: (n, ABS) for n in BindNamespaces.YAML_KEYS}, BindNamespaces),
        ),
        "namespace": ("namespace", p_str(MAX_PATH)),
    },
    RuntimeActions,
)


def check_not_empty(ctx: Ctx, items: list[Any], mark: Mark, key: str, _raw: Any) -> bool:
    if not items:
        ctx.err(mark, key, "command is empty")
        return False
    return True


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
    "command": ("command", p_list(p_str(), check=check_not_empty)),
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
    YAML_KEYS: ClassVar[dict[str, str]] = {
        "name": "name",
        "image": "image",
        **_yaml_keys(IMAGE_CONFIG_TABLE),
    }


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
    if (
        isinstance(value, dict)
        and isinstance(value.get("mode"), int)
        and not isinstance(value.get("mode"), bool)
    ):
        where = value.value_mark("mode") if isinstance(value, YamlMap) else mark
        return ctx.err(
            where,
            f"{key}.mode",
            'mode must be a quoted octal string such as "0644" (YAML reads 0644 as a number)',
        )
    entry = p_obj(FILE_TABLE, FileEntry, ("path",))(ctx, value, mark, key)
    if entry is INVALID:
        return INVALID
    return check_file_entry(ctx, entry, mark, key)


def check_file_entry(ctx: Ctx, entry: FileEntry, mark: Mark, key: str) -> Any:
    kinds = [
        k
        for k in CONTENT_KINDS
        if (getattr(entry, k) is True if k == "directory" else getattr(entry, k) is not None)
    ]
    if len(kinds) != 1:
        have = " and ".join(kinds) if kinds else "none of them"
        return ctx.err(
            mark,
            key,
            f"{entry.path}: give exactly one of directory, symlink, "
            f"contents, source, metadata (has {have})",
        )
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
            return ctx.err(mark, f"{key}.source", f"source {written!r} does not exist ({resolved})")
        if not resolved.is_file():
            return ctx.err(mark, f"{key}.source", f"source {written!r} is not a regular file")
    return FileEntry(
        entry.path,
        entry.directory,
        entry.symlink,
        entry.contents,
        str(resolved),
        entry.metadata,
        entry.optional,
        entry.mode,
        entry.uid,
        entry.gid,
        source_as_written=written,
    )


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


parse_volume = p_obj(
    {
        "name": ("name", p_str(1024, check_volume_name)),
        "image": ("image", p_str(1024, "image_ref")),
        "readonly": ("readonly", p_bool),
        "format": ("format", p_enum("filesystem", "oci")),
        "platforms": ("platforms", p_list(p_str(64, "platform"))),
    },
    VolumeSpec,
    ("name",),
)
