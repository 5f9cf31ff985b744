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

Images come from the image cache (:mod:`provision.providers.qemu.images`): a create names an
image digest that was published there (the qemu target's ``publish`` and ``resolve_image``).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from provision import schema
from provision.agent import AGENT_PORT, read_agent
from provision.clock import Clock
from provision.errors import CommandError, ProvisionError, UsageError
from provision.providers.qemu.images import resolve_cached_image
from provision.providers.qemu.state import (
    PortMapping,
    VMInfo,
    check_vm_name,
    default_state_root,
    list_vms,
    read_vm,
    vm_dir,
)
from provision.providers.qemu.vm import VMConfig, VMError, start_vm, stop_vm
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
from provision.reconcile.spec import ProviderSpec, parse_duration
from provision.schema import Field, Schema, check_mapping

PRIVATE = "qemu-"  # tag prefix of what this provider records for itself (not shown as tags)
TAG_KEY = "qemu-key"
TAG_CREATED = "qemu-created"
TAG_IMAGE = "qemu-image"
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


def _parse_mem(value: Any) -> int | None:
    """MiB: ``512``, ``512M``, ``1G``; at least 64."""
    if isinstance(value, bool):
        return None
    match = _MEM.fullmatch(str(value).strip())
    if match is None:
        return None
    number = int(match.group(1)) * (1024 if (match.group(2) or "").upper().startswith("G") else 1)
    return number if 64 <= number <= 1 << 20 else None


def _parse_port(value: Any) -> tuple[int, Literal["tcp", "udp"]] | None:
    match = _PORT.fullmatch(str(value).strip()) if not isinstance(value, bool) else None
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        return None
    return int(match.group(1)), "udp" if match.group(2) == "udp" else "tcp"


ACCELS = ("tcg", "kvm", "auto")
PROPERTIES = Schema(
    {
        "accel": Field(
            "tcg, kvm or auto", schema.one_of(*ACCELS), doc="default: the provider's accel"
        ),
        "mem": Field("MiB (512) or 512M / 1G, at least 64M", _parse_mem, doc="default 512"),
        "cpus": Field("a whole number from 1 to 64", schema.integer(1, 64), doc="default 1"),
        "ports": Field(
            'a list of guest ports, e.g. [80, "53/udp"]', schema.list_of(_parse_port, 64)
        ),
        "cmdline": Field(
            "a string (appended to the kernel command line)", schema.text(max_len=4096)
        ),
        "data": Field("a string (the user data)", schema.text(max_len=1 << 20)),
    }
)
OPTIONS = Schema(
    {
        "stateRoot": Field("a directory path", schema.text(max_len=4096)),
        "accel": Field("tcg, kvm or auto", schema.one_of(*ACCELS), doc="default tcg"),
        "agentPort": Field(
            "a TCP port from 1 to 65535", schema.integer(1, 65535), doc="default 7080"
        ),
        "stopTimeout": Field(
            "a duration from 1s to 1h, like 10s", schema.duration(1.0, 3600.0), doc="default 10s"
        ),
        "pageSize": Field(
            "a whole number from 1 to 10000", schema.integer(1, 10_000), doc="default 50"
        ),
    }
)


def parse_machine_properties(
    properties: Mapping[str, Any], default_accel: str = "tcg"
) -> MachineProperties:
    """A qemu group's properties, checked against :data:`PROPERTIES`; a UsageError naming every
    bad one (the cluster-spec loader reports the same problems located)."""
    problems = check_mapping(PROPERTIES, properties)
    if problems:
        raise UsageError(
            "invalid qemu properties: "
            + "; ".join(f"{'.'.join(map(str, v.path))}: {v.message}" for v in problems),
            hint="see docs/local-cluster.md for the qemu group properties",
        )
    mem = _parse_mem(properties.get("mem", 512)) or 512
    ports = [
        port for item in properties.get("ports", []) if (port := _parse_port(item)) is not None
    ]
    return MachineProperties(
        str(properties.get("accel", default_accel)),
        mem,
        int(properties.get("cpus", 1)),
        tuple(dict.fromkeys(ports)),
        str(properties.get("cmdline", "")),
        properties.get("data"),
    )


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
        base: Path | None = None,
    ) -> None:
        self.name = name
        self.base = base or Path.cwd()  # relative image paths count from here (the cluster file)
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
            tags = {
                **request.tags,
                TAG_KEY: key_tag(request.key),
                TAG_CREATED: repr(self.clock.now()),
                TAG_IMAGE: request.image,
            }
            last: ProvisionError | None = None
            for _attempt in range(3):
                config = VMConfig(
                    name=name,
                    artifact=artifact,
                    accel=props.accel,
                    mem_mib=props.mem_mib,
                    cpus=props.cpus,
                    publish=self._ports(props),
                    data=props.data.encode() if props.data is not None else None,
                    cmdline_extra=props.cmdline,
                    tags=tags,
                )
                try:
                    self.launcher.start(config, self.state_root)
                except (UsageError, CommandError) as exc:
                    if (
                        "in use" not in str(exc).lower()
                        and "could not set up host forwarding" not in str(exc).lower()
                    ):
                        raise ProviderError(
                            f"cannot start VM {name}: {exc}", hint=getattr(exc, "hint", None)
                        ) from exc
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
            (
                vm
                for vm in self.launcher.list(self.state_root)
                if all(vm.tags.get(k) == v for k, v in tags.items())
            ),
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
            raise ProviderError(
                f"VM {instance_id} belongs to no cluster; refusing to destroy it",
                hint=f"stop it yourself: provision stop {instance_id}",
            )
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


def state_root_of(spec: ProviderSpec) -> Path:
    """``options.stateRoot`` (relative to the cluster file), else the default state root."""
    value = spec.options.get("stateRoot")
    return (spec.base / str(value)).resolve() if value else default_state_root()


def create_qemu_provider(spec: ProviderSpec, clock: Clock) -> QemuProvider:
    """The qemu target's provider for ``spec`` (options checked against :data:`OPTIONS`)."""
    options = spec.options
    problems = check_mapping(OPTIONS, options)
    if problems:
        raise UsageError(
            f"provider {spec.name!r}: "
            + "; ".join(f"options.{'.'.join(map(str, v.path))}: {v.message}" for v in problems)
        )
    return QemuProvider(
        state_root_of(spec),
        clock,
        name=spec.name,
        accel=str(options.get("accel", "tcg")),
        agent_port=int(options.get("agentPort", AGENT_PORT)),
        stop_timeout=parse_duration(options.get("stopTimeout", 10.0)) or 10.0,
        page_size=int(options.get("pageSize", 50)),
        base=spec.base,
    )
