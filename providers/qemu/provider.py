"""The ``qemu`` provider of the reconcile engine: a cluster's machines as local QEMU VMs.

Each machine is a VM started by :mod:`provision.providers.qemu.vm` (detached) with its state
directory ``STATE_ROOT/vms/NAME/``; the directory's ``config.json`` carries the ownership tags,
written (atomically) before QEMU starts, so a machine is owned from birth. The VM's name is
derived from the create's idempotency key: creating twice with one key finds the first VM.

Every VM publishes the agent port (7080) and each port the group declares on a free host port
of 127.0.0.1; ``address()`` returns it. A machine is healthy when its agent answers there and
reports every service ``running`` (``probe_health``; used when the group has a ``health``
section). Group properties::

    accel: tcg | kvm | auto      (default: the provider option ``accel``, else tcg)
    mem: 512 | 512M | 1G         (MiB unless suffixed; default 512)
    cpus: 1
    ports: [80, "53/udp"]        (guest ports to publish besides the agent's)
    cmdline: "quiet"             (appended to the kernel command line)
    data: "..."                  (user data, on a CIDATA CD)

Provider options: ``stateRoot`` (default ``$PROVISION_STATE`` or ``~/.local/state/provision``;
relative to the cluster file), ``accel``, ``agentPort`` (7080), ``stopTimeout`` (10 s),
``pageSize`` (50).

Images: a group's ``image`` is an image spec (``examples/web.yml``: built as kernel+initrd into
``STATE_ROOT/images/<digest>/`` once per digest), a built artifact (``out/web``: copied there,
keyed by the sha256 of what boots), or an image digest already in that cache. The digest is
the image id the engine compares to find out-of-date machines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import requests

from provision.errors import CommandError, ImageNotFoundError, ProvisionError, UsageError
from provision.providers.qemu.artifact import BootKind, resolve_artifact
from provision.providers.qemu.state import (
    PortMapping,
    VMInfo,
    check_vm_name,
    default_state_root,
    list_vms,
    read_vm,
    vm_dir,
    write_json_atomic,
)
from provision.providers.qemu.vm import VMConfig, VMError, start_vm, stop_vm
from provision.reconcile.clock import Clock
from provision.reconcile.provider import (
    TAG_CLUSTER,
    CreateRequest,
    HealthState,
    Instance,
    InstanceState,
    Page,
    ProviderError,
    TransientProviderError,
)
from provision.reconcile.spec import GroupSpec, ProviderSpec, parse_duration

AGENT_PORT = 7080
PRIVATE = "qemu-"  # tag prefix of what this provider records for itself (not shown as tags)
TAG_KEY = "qemu-key"
TAG_CREATED = "qemu-created"
TAG_IMAGE = "qemu-image"
IMAGE_INFO = "image.json"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_MEM = re.compile(r"(\d+)\s*([MG]i?B?)?", re.IGNORECASE)
_PORT = re.compile(r"(\d{1,5})(?:/(tcp|udp))?")
Progress = Callable[[str], None]


# --------------------------------------------------------------------------- the launcher


class Launcher(Protocol):
    """What the provider needs of a VM launcher (injected: tests pass a fake one)."""

    def start(self, config: VMConfig, state_root: Path) -> None: ...

    def read(self, state_root: Path, name: str) -> VMInfo | None: ...

    def list(self, state_root: Path) -> list[VMInfo]: ...

    def stop(self, state_root: Path, name: str, timeout: float) -> None: ...


class QemuLauncher:
    """The real launcher: :mod:`provision.providers.qemu.vm`, VMs detached."""

    def start(self, config: VMConfig, state_root: Path) -> None:
        start_vm(config, state_root=state_root, detach=True)

    def read(self, state_root: Path, name: str) -> VMInfo | None:
        return read_vm(vm_dir(state_root, name))

    def list(self, state_root: Path) -> list[VMInfo]:
        return list_vms(state_root)

    def stop(self, state_root: Path, name: str, timeout: float) -> None:
        if vm_dir(state_root, name).is_dir():
            stop_vm(name, state_root, timeout=timeout)


# --------------------------------------------------------------------------- properties


@dataclass(frozen=True)
class MachineProperties:
    """A qemu group's ``properties``, checked."""

    accel: str = "tcg"
    mem_mib: int = 512
    cpus: int = 1
    ports: tuple[tuple[int, Literal["tcp", "udp"]], ...] = ()
    cmdline: str = ""
    data: str | None = None


def parse_machine_properties(properties: Mapping[str, Any], default_accel: str = "tcg") -> MachineProperties:
    """Check a qemu group's properties; raise UsageError naming every bad one."""
    problems: list[str] = []
    known = {"accel", "mem", "cpus", "ports", "cmdline", "data"}
    problems += [f"unknown property {key!r} (known: {', '.join(sorted(known))})" for key in properties if key not in known]
    accel = properties.get("accel", default_accel)
    if accel not in ("tcg", "kvm", "auto"):
        problems.append(f"accel must be tcg, kvm or auto, not {accel!r}")
        accel = "tcg"
    mem = _parse_mem(properties.get("mem", 512))
    if mem is None:
        problems.append(f"mem must be MiB (512) or 512M / 1G, at least 64M, not {properties.get('mem')!r}")
    cpus = properties.get("cpus", 1)
    if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= 64:
        problems.append(f"cpus must be a whole number from 1 to 64, not {cpus!r}")
        cpus = 1
    ports: list[tuple[int, Literal["tcp", "udp"]]] = []
    raw_ports = properties.get("ports", [])
    if not isinstance(raw_ports, list):
        problems.append("ports must be a list of guest ports, e.g. [80, \"53/udp\"]")
        raw_ports = []
    for item in raw_ports:
        match = _PORT.fullmatch(str(item).strip()) if not isinstance(item, bool) else None
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            problems.append(f"ports: {item!r} is not a port (80, or \"53/udp\")")
            continue
        ports.append((int(match.group(1)), "udp" if match.group(2) == "udp" else "tcp"))
    cmdline = properties.get("cmdline", "")
    if not isinstance(cmdline, str):
        problems.append("cmdline must be a string")
        cmdline = ""
    data = properties.get("data")
    if data is not None and not isinstance(data, str):
        problems.append("data must be a string (the user data)")
        data = None
    if problems:
        raise UsageError("invalid qemu properties: " + "; ".join(problems),
                         hint="see docs/local-cluster.md for the qemu group properties")
    return MachineProperties(str(accel), mem or 512, cpus, tuple(dict.fromkeys(ports)), cmdline, data)


def _parse_mem(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    match = _MEM.fullmatch(str(value).strip())
    if match is None:
        return None
    number = int(match.group(1)) * (1024 if (match.group(2) or "").upper().startswith("G") else 1)
    return number if number >= 64 else None


# --------------------------------------------------------------------------- names


def vm_name_for(key: str, name: str) -> str:
    """The VM name for a create: readable (the engine's machine name) and unique to the
    idempotency key (its hash), so a retried create finds the VM the first one started."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    readable = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "vm"
    return check_vm_name(f"{readable[:50]}-{digest[:8]}")


def key_tag(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def free_port(proto: Literal["tcp", "udp"] = "tcp") -> int:
    """A port of 127.0.0.1 that nothing listens on now (the kernel's choice)."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- the provider


class QemuProvider:
    """The Provider Protocol over local QEMU VMs (see the module docstring)."""

    def __init__(
        self,
        state_root: Path,
        clock: Clock,
        *,
        name: str = "qemu",
        launcher: Launcher | None = None,
        accel: str = "tcg",
        agent_port: int = AGENT_PORT,
        stop_timeout: float = 10.0,
        page_size: int = 50,
        port_picker: Callable[[Literal["tcp", "udp"]], int] = free_port,
    ) -> None:
        self.name = name
        self.state_root = state_root
        self.clock = clock
        self.launcher: Launcher = launcher or QemuLauncher()
        self.accel = accel
        self.agent_port = agent_port
        self.stop_timeout = stop_timeout
        self.page_size = max(1, page_size)
        self.port_picker = port_picker
        self._lock = threading.Lock()  # one create at a time: port choice and start

    # -- create ---------------------------------------------------------------------------

    def create_instance(self, request: CreateRequest) -> Instance:
        props = self._properties(request.properties)
        name = vm_name_for(request.key, request.name)
        with self._lock:
            existing = self.launcher.read(self.state_root, name)
            if existing is not None and existing.state == "running":
                if existing.tags.get(TAG_KEY) != key_tag(request.key):
                    raise ProviderError(f"VM {name} exists and was created for another request")
                return self._instance(existing)
            artifact = resolve_cached_image(self.state_root, request.image)
            tags = {**request.tags, TAG_KEY: key_tag(request.key), TAG_CREATED: repr(self.clock.now()),
                    TAG_IMAGE: request.image}
            last: ProvisionError | None = None
            for _attempt in range(3):
                config = VMConfig(
                    name=name, artifact=artifact, accel=props.accel, mem_mib=props.mem_mib, cpus=props.cpus,
                    publish=self._ports(props), data=props.data.encode() if props.data is not None else None,
                    cmdline_extra=props.cmdline, tags=tags,
                )
                try:
                    self.launcher.start(config, self.state_root)
                except (UsageError, CommandError) as exc:
                    if "in use" not in str(exc).lower() and "could not set up host forwarding" not in str(exc).lower():
                        raise ProviderError(f"cannot start VM {name}: {exc}",
                                            hint=getattr(exc, "hint", None)) from exc
                    last = exc  # a chosen port was taken meanwhile: choose again
                    continue
                except VMError as exc:
                    raise TransientProviderError(f"VM {name} did not start: {exc}") from exc
                started = self.launcher.read(self.state_root, name)
                if started is None:
                    raise TransientProviderError(f"VM {name} started but has no state directory")
                return self._instance(started)
            raise TransientProviderError(f"no free host port for VM {name}: {last}")

    def _properties(self, properties: Mapping[str, Any]) -> MachineProperties:
        try:
            return parse_machine_properties(properties, self.accel)
        except UsageError as exc:
            raise ProviderError(exc.message, hint=exc.hint) from exc

    def _ports(self, props: MachineProperties) -> tuple[PortMapping, ...]:
        wanted: list[tuple[int, Literal["tcp", "udp"]]] = [(self.agent_port, "tcp")]
        wanted += [p for p in props.ports if p != (self.agent_port, "tcp")]
        return tuple(PortMapping(self.port_picker(proto), guest, proto) for guest, proto in wanted)

    # -- list -------------------------------------------------------------------------------

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        matching = sorted(
            (vm for vm in self.launcher.list(self.state_root) if all(vm.tags.get(k) == v for k, v in tags.items())),
            key=lambda vm: vm.name,
        )
        if page_token is not None:
            matching = [vm for vm in matching if vm.name > page_token]
        page = matching[: self.page_size]
        more = len(matching) > self.page_size
        return Page(tuple(self._instance(vm) for vm in page), page[-1].name if more else None)

    def _instance(self, vm: VMInfo) -> Instance:
        try:
            created = float(vm.tags.get(TAG_CREATED, "0"))
        except ValueError:
            created = 0.0
        return Instance(
            id=vm.name,
            name=vm.name,
            tags={k: v for k, v in vm.tags.items() if not k.startswith(PRIVATE)},
            image=vm.tags.get(TAG_IMAGE, ""),
            created_at=created,
            state=InstanceState.RUNNING if vm.state == "running" else InstanceState.TERMINATED,
        )

    # -- destroy ----------------------------------------------------------------------------

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        """Stop the VM (ACPI, then kill after ``stopTimeout``) and remove its state; a VM that
        is already gone is fine. A VM no cluster owns (``provision run``) is refused."""
        try:
            vm = self.launcher.read(self.state_root, instance_id)
        except UsageError as exc:
            raise ProviderError(f"not a VM name: {instance_id!r}") from exc
        if vm is None:
            if vm_dir(self.state_root, instance_id).is_dir():
                shutil.rmtree(vm_dir(self.state_root, instance_id), ignore_errors=True)
            return
        if TAG_CLUSTER not in vm.tags:
            raise ProviderError(f"VM {instance_id} belongs to no cluster; refusing to destroy it",
                                hint=f"stop it yourself: provision stop {instance_id}")
        try:
            self.launcher.stop(self.state_root, instance_id, self.stop_timeout)
        except UsageError:
            return  # gone meanwhile
        except VMError as exc:
            raise TransientProviderError(f"VM {instance_id} did not stop: {exc}") from exc

    # -- health -----------------------------------------------------------------------------

    def probe_health(self, instance: Instance) -> HealthState:
        """Healthy when the machine's agent answers and reports every service running."""
        where = self.address(instance, self.agent_port)
        if where is None:
            return HealthState.UNKNOWN
        status = read_agent(*where)
        if status is None or any(state != "running" for state in status.services.values()):
            return HealthState.UNHEALTHY
        return HealthState.HEALTHY

    # -- address ----------------------------------------------------------------------------

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        vm = self.launcher.read(self.state_root, instance.id)
        if vm is None:
            return None
        for mapping in vm.published:
            if mapping.guest == port and mapping.proto == "tcp":
                return ("127.0.0.1", mapping.host)
        return None


def state_root_of(spec: ProviderSpec, base: Path) -> Path:
    value = spec.options.get("stateRoot")
    return (base / str(value)).resolve() if value else default_state_root()


def create_qemu_provider(spec: ProviderSpec, clock: Clock, base: Path) -> QemuProvider:
    """The registry's factory for ``type: qemu``."""
    options = spec.options
    known = {"stateRoot", "accel", "agentPort", "stopTimeout", "pageSize"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"provider {spec.name!r}: unknown qemu option(s) {', '.join(unknown)}",
                         hint="known: " + ", ".join(sorted(known)))
    accel = str(options.get("accel", "tcg"))
    if accel not in ("tcg", "kvm", "auto"):
        raise UsageError(f"provider {spec.name!r}: accel must be tcg, kvm or auto")
    stop_timeout = parse_duration(options.get("stopTimeout", 10.0))
    agent_port = options.get("agentPort", AGENT_PORT)
    page_size = options.get("pageSize", 50)
    if stop_timeout is None:
        raise UsageError(f"provider {spec.name!r}: stopTimeout must be a duration like 10s")
    for key, value, top in (("agentPort", agent_port, 65535), ("pageSize", page_size, 10_000)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise UsageError(f"provider {spec.name!r}: {key} must be a whole number from 1 to {top}")
    return QemuProvider(state_root_of(spec, base), clock, name=spec.name, accel=accel,
                        agent_port=agent_port, stop_timeout=stop_timeout, page_size=page_size)


# --------------------------------------------------------------------------- the agent


@dataclass(frozen=True)
class AgentStatus:
    """What a machine's agent answers on its port (GET /)."""

    digest: str
    hostname: str
    uptime: float
    services: Mapping[str, str]  # name -> running | restarting | exited | starting


def read_agent(host: str, port: int, timeout: float = 2.0) -> AgentStatus | None:
    """The agent's status, or None when it does not answer (yet) with its JSON."""
    try:
        response = requests.get(f"http://{host}:{port}/", timeout=timeout)
        body = response.json()
    except (requests.RequestException, ValueError):
        return None
    if not isinstance(body, dict) or not response.ok:
        return None
    services = body.get("services")
    states = {str(k): str(v.get("state", "?")) if isinstance(v, dict) else str(v)
              for k, v in (services.items() if isinstance(services, dict) else ())}
    uptime = body.get("uptime", 0)
    return AgentStatus(str(body.get("digest", "")), str(body.get("hostname", "")),
                       float(uptime) if isinstance(uptime, int | float) else 0.0, states)


# --------------------------------------------------------------------------- images


class ComponentsMissingError(ProvisionError):
    """The image spec uses component images (provision/...) that are not built yet."""


def image_cache(state_root: Path) -> Path:
    return state_root / "images"


def resolve_cached_image(state_root: Path, image: str) -> Path:
    """The artifact (for ``start_vm``) an image digest names in the cache."""
    match = _DIGEST.fullmatch(image)
    directory = image_cache(state_root) / match.group(1) if match else None
    info = _read_image_info(directory) if directory is not None else None
    if directory is None or info is None:
        raise ProviderError(
            f"image {image!r} is not in the qemu image cache ({image_cache(state_root)})",
            hint="give the group's image as an image spec (.yml) or a built artifact; "
            "`provision up` builds and caches it",
        )
    return directory / str(info["artifact"])


def _read_image_info(directory: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((directory / IMAGE_INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "artifact" in info else None


def resolve_qemu_image(image: str, group: GroupSpec, provider: ProviderSpec, base_dir: Path,
                       *, progress: Progress | None = None, store: Any = None) -> str:
    """A qemu group's image -> its digest, building or caching it first (the engine's seam)."""
    root = state_root_of(provider, base_dir)
    if _DIGEST.fullmatch(image):
        resolve_cached_image(root, image)
        return image
    path = (base_dir / image) if not os.path.isabs(image) else Path(image)
    if path.suffix in (".yml", ".yaml"):
        if not path.is_file():
            raise UsageError(f"group {group.name!r}: image spec {path} does not exist")
        return build_spec_image(path, image_cache(root), progress=progress, store=store)
    try:
        return import_artifact(path, image_cache(root), progress=progress)
    except UsageError as exc:
        raise UsageError(f"group {group.name!r}: {exc.message}", hint=exc.hint) from exc


def _staging(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".new-", dir=cache))


def _publish(staging: Path, cache: Path, digest: str, artifact: str, source: str) -> None:
    """Record what boots, then rename the staged directory to the digest's (once)."""
    write_json_atomic(staging / IMAGE_INFO, {
        "digest": digest, "artifact": artifact, "source": source,
        "cached_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    target = cache / digest.split(":", 1)[1]
    try:
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # someone cached it meanwhile
        if _read_image_info(target) is None:
            raise


def digest_artifact(path: Path) -> tuple[str, list[Path]]:
    """sha256 over what a built artifact boots (kernel, initrd, root image, command line, or
    the disk or ISO), and those files."""
    source = resolve_artifact(path)
    files = [p for p in (source.path, source.initrd, source.root_image) if p is not None]
    h = hashlib.sha256(b"provision-qemu-artifact-v1\n")
    h.update(f"{source.kind.value} efi={source.efi}\n".encode())
    for file in files:
        with open(file, "rb") as handle:
            h.update(f"{file.name}\n".encode())
            while chunk := handle.read(1 << 20):
                h.update(chunk)
    if source.kind is BootKind.KERNEL:
        h.update(f"\ncmdline {source.cmdline}".encode())
    return "sha256:" + h.hexdigest(), files


def import_artifact(path: Path, cache: Path, *, progress: Progress | None = None) -> str:
    """Copy a built artifact into the cache under its digest (once); return the digest."""
    digest, files = digest_artifact(path)
    if _read_image_info(cache / digest.split(":", 1)[1]) is not None:
        return digest
    source = resolve_artifact(path)
    if progress is not None:
        progress(f"caching {path} as {digest[:19]}")
    staging = _staging(cache)
    try:
        for file in files:
            shutil.copyfile(file, staging / file.name)
        if source.kind is BootKind.KERNEL:
            prefix = source.path.name.removesuffix("-kernel")
            (staging / f"{prefix}-cmdline").write_text(source.cmdline + "\n")
        _publish(staging, cache, digest, source.path.name, str(path.resolve()))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return digest


def plan_spec_digest(spec_path: Path, store: Any) -> str:
    """The image digest a build of ``spec_path`` will have (resolving its images in the
    store, pulling only what is not a provision component)."""
    from provision.assemble.root import compute_image_digest, list_file_sources, list_image_uses
    from provision.oci.pull import ensure_image
    from provision.oci.store import Platform
    from provision.spec.load import load_spec

    spec = load_spec([spec_path])
    images = {}
    missing: list[str] = []
    for use in list_image_uses(spec):
        if use.ref in images:
            continue
        try:
            images[use.ref] = ensure_image(store, use.ref, Platform.host(), pull="never")
        except ImageNotFoundError:
            if use.ref.split("/", 1)[0] == "provision" or "/provision/" in use.ref:
                missing.append(use.ref)
                continue
            images[use.ref] = ensure_image(store, use.ref, Platform.host(), pull="missing")
    if missing:
        raise ComponentsMissingError(
            f"{spec_path}: the component images {', '.join(dict.fromkeys(missing))} are not built yet",
            hint="build them first: provision pkg build --all",
        )
    return compute_image_digest(spec, images, list_file_sources(spec, spec_path.parent))


def build_spec_image(spec_path: Path, cache: Path, *, progress: Progress | None = None, store: Any = None) -> str:
    """Build an image spec as kernel+initrd into the cache, unless its digest is there already."""
    from provision.build import build_image
    from provision.oci.store import ImageStore

    store = store if store is not None else ImageStore.default()
    digest = plan_spec_digest(spec_path, store)
    if _read_image_info(cache / digest.split(":", 1)[1]) is not None:
        return digest
    if progress is not None:
        progress(f"building {spec_path} ({digest[:19]})")
    staging = _staging(cache)
    try:
        result = build_image([spec_path], store=store, formats="kernel+initrd", outdir=staging,
                             progress=progress)
        _publish(staging, cache, result.image_digest, result.manifest.name, str(spec_path.resolve()))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result.image_digest
