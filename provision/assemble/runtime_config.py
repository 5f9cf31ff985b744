"""Each container's OCI runtime ``config.json`` and LinuxKit's ``runtime.json``.

The rules follow LinuxKit's ``ConfigToOCI`` (its defaults match Docker's):

* precedence: the image's own config < its ``org.mobyproject.config`` label < the YAML;
  a field set later replaces the earlier one, except ``capabilities.add`` and ``binds.add``,
  which add (uniquely, in order) to the label's list unless the YAML replaces the list;
* ``args``: ``command``, else Entrypoint + Cmd; ``cwd``: ``cwd``, else WorkingDir, else ``/``;
* ``env``: merged by variable name (image, then label, then YAML; a later value wins) so an
  image's ``PATH`` survives a YAML ``env`` — LinuxKit replaces the whole list instead;
* default mounts ``/dev``, ``/dev/pts``, ``/proc``, ``/sys``, ``/sys/fs/cgroup`` (``ro`` on
  ``/dev`` and ``/sys`` when the root is read-only), then ``tmpfs``, ``binds``, ``mounts``,
  a later mount of the same destination winning; the list is sorted by destination; a
  relative ``mounts`` destination lies inside the container's root, as runc reads it, and is
  written absolute (``writeable-host-etc`` -> ``/writeable-host-etc``); ``runtime.json``
  keeps it as written (init resolves it under the bundle's ``rootfs``, as LinuxKit's does);
* namespaces: net, ipc, uts and user are the host's unless set (``new``, ``none`` for net,
  or a path); pid is new unless ``host``; mount and cgroup namespaces are always new;
* capabilities: ``all`` / ``none`` alone, else names; bounding = inheritable = permitted =
  the sorted union of capabilities and ambient;
* root: ``rootfs``, read-only when ``readonly: true`` (LinuxKit's default is writable);
* uid, gid and additionalGids: numbers, ``root``, or a container's name (LinuxKit gives each
  container an id from 100 up in onboot, onshutdown, services order: see
  :func:`assign_container_ids`); when neither YAML nor label sets them, a numeric image
  ``User`` (``"1000"`` or ``"1000:1000"``) is honoured;
* ``cgroupsPath``: as set, else ``/provision/<role>/<name>`` so each container has its own
  cgroup (LinuxKit leaves it empty);
* a bind source that is not absolute names a volume, mounted from
  ``/containers/volumes/<name>``; a read-write bind of a read-only volume is an error.

The JSON shape follows the runtime-spec's Go types: empty values are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision.errors import ProvisionError
from provision.spec.fields import (
    CAPABILITIES,
    DEFAULT_MOUNTPOINTS,
    MOUNT_TYPE_FROM_SOURCE,
    parse_rlimit,
)
from provision.spec.image import ImageConfig, ImageEntry, ImageSpec, Mount, VolumeSpec

OCI_VERSION = "1.0.2"
VOLUMES_DIR = "/containers/volumes"
FIRST_CONTAINER_ID = 100


class RuntimeConfigError(ProvisionError):
    """The entry, its image's label and its image config do not make a runnable container."""

    exit_code = 2


@dataclass(frozen=True)
class RuntimeBundle:
    config: dict[str, Any]
    runtime: dict[str, Any]
    readonly: bool


def assign_container_ids(spec: ImageSpec) -> dict[str, int]:
    """LinuxKit's id map: each container's name -> an id from 100 up (onboot, onshutdown,
    services order), usable as uid/gid by name."""
    ids: dict[str, int] = {}
    next_id = FIRST_CONTAINER_ID
    for entry in (*spec.onboot, *spec.onshutdown, *spec.services):
        ids[entry.name] = next_id
        next_id += 1
    return ids


def _pick(attr: str, entry: ImageEntry, label: ImageConfig | None) -> Any:
    value = getattr(entry, attr)
    if value is None and label is not None:
        value = getattr(label, attr)
    return value


def _unique(*lists: Iterable[str] | None) -> list[str]:
    out: list[str] = []
    for items in lists:
        for item in items or ():
            if item not in out:
                out.append(item)
    return out


def _merge_env(*layers: Iterable[str] | None) -> list[str]:
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer or ():
            merged[item.partition("=")[0]] = item
    return list(merged.values())


def _volumes_by_name(
    volumes: Mapping[str, VolumeSpec] | Iterable[VolumeSpec],
) -> dict[str, VolumeSpec]:
    if isinstance(volumes, Mapping):
        return dict(volumes)
    return {volume.name: volume for volume in volumes}


def _mount(dest: str, kind: str, source: str, options: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"destination": dest, "type": kind, "source": source}
    if options:
        out["options"] = list(options)
    return out


def render_mounts(
    entry: ImageEntry,
    label: ImageConfig | None,
    readonly: bool,
    volumes: dict[str, VolumeSpec],
    where: str,
) -> list[dict[str, Any]]:
    ro = ["ro"] if readonly else []
    mounts: dict[str, dict[str, Any]] = {
        "/proc": _mount("/proc", "proc", "proc", ["nosuid", "nodev", "noexec", "relatime"]),
        "/dev": _mount(
            "/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k", *ro]
        ),
        "/dev/pts": _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        ),
        "/sys": _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", *ro]),
        "/sys/fs/cgroup": _mount(
            "/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]
        ),
    }
    for tmpfs in _pick("tmpfs", entry, label) or ():
        dest, _, opts = tmpfs.partition(":")
        mounts[dest] = _mount(dest, "tmpfs", "tmpfs", opts.split(",") if opts else None)
    if entry.binds is not None:
        binds = list(entry.binds)
    else:
        base = label.binds if label is not None else None
        label_add = label.binds_add if label is not None else None
        binds = _unique(base, label_add, entry.binds_add)
    for bind in binds:
        parts = bind.split(":")
        if len(parts) not in (2, 3):
            raise RuntimeConfigError(f"{where}: bad bind {bind!r}")
        source, dest = parts[0], parts[1]
        options = [*parts[2].split(","), "rbind"] if len(parts) == 3 else ["rw", "rbind", "rshared"]
        if not source.startswith("/"):
            volume = volumes.get(source)
            if volume is None:
                raise RuntimeConfigError(
                    f"{where}: bind source {source!r} is not a declared volume",
                    hint="declare it under volumes:",
                )
            if volume.readonly and "ro" not in options:
                raise RuntimeConfigError(
                    f"{where}: read-write bind of read-only volume {source!r}",
                    hint=f"bind it with :ro ({source}:{dest}:ro)",
                )
            source = f"{VOLUMES_DIR}/{source}"
        mounts[dest] = _mount(dest, "bind", source, options)
    for mount in _pick("mounts", entry, label) or ():
        dest, oci = render_user_mount(mount, where)
        if not dest.startswith("/"):  # relative to the container's root, as runc reads it
            dest = oci["destination"] = "/" + dest.removeprefix("./")
        mounts[dest] = oci
    return [mounts[dest] for dest in sorted(mounts)]


def render_user_mount(mount: Mount, where: str) -> tuple[str, dict[str, Any]]:
    kind = mount.type or ""
    source = mount.source or ""
    if not kind and source in MOUNT_TYPE_FROM_SOURCE:
        kind = source
    if not kind and mount.destination == "/dev":
        kind = "tmpfs"
    if not kind:
        raise RuntimeConfigError(f"{where}: mount for {mount.destination} has no type")
    dest = mount.destination or DEFAULT_MOUNTPOINTS.get(kind, "")
    if not dest:
        raise RuntimeConfigError(f"{where}: {kind} mount has no destination")
    out = _mount(dest, kind, source or kind, mount.options)
    for name in ("uidmappings", "gidmappings"):
        maps = getattr(mount, name)
        if maps:
            out[name] = [_idmap(m) for m in maps]
    return dest, out


def render_namespaces(entry: ImageEntry, label: ImageConfig | None) -> list[dict[str, Any]]:
    namespaces: list[dict[str, Any]] = []

    def add(kind: str, value: str, empty_words: tuple[str, ...]) -> None:
        if value in ("host", "root"):
            return
        item: dict[str, Any] = {"type": kind}
        if value not in empty_words:
            item["path"] = value
        namespaces.append(item)

    add("network", _pick("net", entry, label) or "root", ("new", "none"))
    add("ipc", _pick("ipc", entry, label) or "root", ("new",))
    add("uts", _pick("uts", entry, label) or "root", ("new",))
    add("pid", _pick("pid", entry, label) or "new", ("new",))
    add("user", _pick("userns", entry, label) or "root", ("new",))
    namespaces.append({"type": "mount"})
    namespaces.append({"type": "cgroup"})
    return namespaces


def _expand_caps(caps: list[str], where: str) -> list[str]:
    if len(caps) == 1 and caps[0].lower() == "none":
        return []
    if len(caps) == 1 and caps[0].lower() == "all":
        return list(CAPABILITIES)
    for cap in caps:
        if cap not in CAPABILITIES:
            raise RuntimeConfigError(f"{where}: unknown capability {cap!r}")
    return caps


def render_capabilities(entry: ImageEntry, label: ImageConfig | None, where: str) -> dict[str, Any]:
    if entry.capabilities is not None:
        caps = list(entry.capabilities)
    else:
        caps = _unique(
            label.capabilities if label else None,
            label.capabilities_add if label else None,
            entry.capabilities_add,
        )
    effective = _expand_caps(caps, where)
    ambient = _expand_caps(list(_pick("ambient", entry, label) or ()), where)
    bounding = sorted(set(effective) | set(ambient))
    out: dict[str, Any] = {}
    for name, value in (
        ("bounding", bounding),
        ("effective", effective),
        ("inheritable", bounding),
        ("permitted", bounding),
        ("ambient", ambient),
    ):
        if value:
            out[name] = list(value)
    return out


def resolve_id(value: int | str | None, id_map: Mapping[str, int] | None, where: str) -> int:
    if value is None or value in ("", "root"):
        return 0
    if isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    if id_map is not None and value in id_map:
        return id_map[value]
    raise RuntimeConfigError(
        f"{where}: unknown id name {value!r}",
        hint="use a number, root, or the name of a container in the spec",
    )


def _image_user(image_config: Mapping[str, Any]) -> tuple[int | None, int | None]:
    user = str(image_config.get("User") or "")
    uid, _, gid = user.partition(":")
    return (int(uid) if uid.isdigit() else None, int(gid) if gid.isdigit() else None)


def _idmap(mapping: Any) -> dict[str, Any]:
    return {
        "containerID": mapping.container_id or 0,
        "hostID": mapping.host_id or 0,
        "size": mapping.size or 0,
    }


def render_devices(
    entry: ImageEntry, label: ImageConfig | None, resources: dict[str, Any]
) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = []
    rules = list(resources.get("devices") or [])
    for device in _pick("devices", entry, label) or ():
        if device.path == "all":
            rules.append({"allow": True, "type": device.type, "access": "rwm"})
            continue
        devices.append(
            {
                "path": device.path,
                "type": device.type,
                "major": device.major,
                "minor": device.minor,
                "fileMode": int(device.mode or "0", 8),
            }
        )
        rules.append(
            {
                "allow": True,
                "type": device.type,
                "major": device.major,
                "minor": device.minor,
                "access": "rwm",
            }
        )
    if rules:
        resources["devices"] = rules
    return devices


def render_process(
    entry: ImageEntry,
    image_config: Mapping[str, Any],
    label: ImageConfig | None,
    id_map: Mapping[str, int] | None,
    where: str,
) -> dict[str, Any]:
    command = _pick("command", entry, label)
    if command is not None:
        args = list(command)
    else:
        args = [*(image_config.get("Entrypoint") or []), *(image_config.get("Cmd") or [])]
    env = _merge_env(image_config.get("Env"), label.env if label else None, entry.env)
    cwd = _pick("cwd", entry, label) or image_config.get("WorkingDir") or "/"
    image_uid, image_gid = _image_user(image_config)
    uid_value = _pick("uid", entry, label)
    gid_value = _pick("gid", entry, label)
    user: dict[str, Any] = {
        "uid": resolve_id(uid_value, id_map, where)
        if uid_value is not None or image_uid is None
        else image_uid,
        "gid": resolve_id(gid_value, id_map, where)
        if gid_value is not None or image_gid is None
        else image_gid,
    }
    extra = [resolve_id(g, id_map, where) for g in _pick("additional_gids", entry, label) or ()]
    if extra:
        user["additionalGids"] = extra
    process: dict[str, Any] = {"user": user, "cwd": cwd}
    if args:
        process["args"] = args
    if env:
        process["env"] = env
    process["capabilities"] = render_capabilities(entry, label, where)
    rlimits = [parse_rlimit(text) for text in _pick("rlimits", entry, label) or ()]
    if rlimits:
        process["rlimits"] = rlimits
    if _pick("no_new_privileges", entry, label):
        process["noNewPrivileges"] = True
    oom = _pick("oom_score_adj", entry, label)
    if oom is not None:
        process["oomScoreAdj"] = oom
    return process


def render_runtime(entry: ImageEntry, label: ImageConfig | None) -> dict[str, Any]:
    """LinuxKit's runtime.json: each field from the YAML, else the label, else empty."""
    yaml_rt = entry.runtime
    label_rt = label.runtime if label is not None else None

    def pick(attr: str) -> Any:
        for source in (yaml_rt, label_rt):
            if source is not None and getattr(source, attr) is not None:
                return getattr(source, attr)
        return None

    bind_ns: dict[str, str] = {}
    for name in ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts"):
        value = ""
        for source in (yaml_rt, label_rt):
            if source is not None and source.bind_ns is not None:
                candidate = getattr(source.bind_ns, name)
                if candidate is not None:
                    value = candidate
                    break
        bind_ns[name] = value
    interfaces = []
    for interface in pick("interfaces") or ():
        item: dict[str, Any] = {"createInRoot": bool(interface.create_in_root)}
        for name in ("name", "add", "peer"):
            if getattr(interface, name):
                item[name] = getattr(interface, name)
        interfaces.append(item)
    return {
        "cgroups": list(pick("cgroups") or ()),
        "mounts": [render_user_mount(m, entry.name)[1] for m in pick("mounts") or ()],
        "mkdir": list(pick("mkdir") or ()),
        "interfaces": interfaces,
        "bindNS": bind_ns,
        "namespace": pick("namespace") or "",
    }


def render_runtime_bundle(
    entry: ImageEntry,
    image_config: Mapping[str, Any],
    label: ImageConfig | None,
    *,
    volumes: Mapping[str, VolumeSpec] | Iterable[VolumeSpec] = (),
    role: str = "services",
    id_map: Mapping[str, int] | None = None,
) -> RuntimeBundle:
    """config.json and runtime.json for ``entry`` (see the module's docstring).

    ``image_config`` is the OCI image config's ``config`` object; ``label`` the parsed
    ``org.mobyproject.config`` label (or None); ``role`` is onboot, onshutdown or services;
    ``id_map`` resolves uid/gid names (:func:`assign_container_ids`)."""
    where = f"{role} {entry.name} ({entry.image})"
    image_config = image_config or {}
    readonly = bool(_pick("readonly", entry, label))
    resources = dict(_pick("resources", entry, label) or {})
    linux: dict[str, Any] = {}
    for key, attr in (("uidMappings", "uid_mappings"), ("gidMappings", "gid_mappings")):
        maps = _pick(attr, entry, label)
        if maps:
            linux[key] = [_idmap(m) for m in maps]
    sysctl = _pick("sysctl", entry, label)
    if sysctl:
        linux["sysctl"] = dict(sysctl)
    devices = render_devices(entry, label, resources)
    linux["resources"] = resources
    linux["cgroupsPath"] = _pick("cgroups_path", entry, label) or f"/provision/{role}/{entry.name}"
    linux["namespaces"] = render_namespaces(entry, label)
    if devices:
        linux["devices"] = devices
    for key, attr in (
        ("rootfsPropagation", "rootfs_propagation"),
        ("maskedPaths", "masked_paths"),
        ("readonlyPaths", "readonly_paths"),
    ):
        value = _pick(attr, entry, label)
        if value:
            linux[key] = list(value) if isinstance(value, tuple) else value
    root: dict[str, Any] = {"path": "rootfs"}
    if readonly:
        root["readonly"] = True
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": render_process(entry, image_config, label, id_map, where),
        "root": root,
        "mounts": render_mounts(entry, label, readonly, _volumes_by_name(volumes), where),
        "linux": linux,
    }
    hostname = _pick("hostname", entry, label)
    if hostname:
        config["hostname"] = hostname
    annotations = _pick("annotations", entry, label)
    if annotations:
        config["annotations"] = dict(annotations)
    return RuntimeBundle(config, render_runtime(entry, label), readonly)
