"""The ``metal`` provider: a cluster's machines are machines of the lab's inventory.

* create: reserve a free machine whose labels match the group's ``properties.selector`` (the
  reservation is named by the idempotency key, so a retried create finds the same machine),
  point it at the image (``provision serve`` answers its iPXE request with that image), set a
  one-time network boot through its BMC and power it on (a machine that is on is first powered
  off in order, as destroy does). A retry of a create whose machine is still off boots it
  again.
* list: the reserved machines carrying the tags, with their power state (off = terminated).
  A machine with a local ``disk`` in the lab file also gets the image's raw disk to install
  (``provision serve`` adds ``provision.install=URL provision.disk=DEV`` to its command line:
  init writes the disk by builders/disk.py's write_install rule, keeping provision-data).
* list: the reserved machines carrying the tags, with their power state (off = terminated).
* destroy: when the group names a ``wipe`` profile, boot it once (``provision serve`` answers
  that profile while the reservation is marked wiping) and wait until the machine powers
  itself off (the wipe is done) or ``wipeTimeout`` passes; then power the machine off and
  release it (powered off in order: asked to shut down through the BMC, forced off only when it
  is still on after ``shutdownTimeout``, so its disk's data is written; in that order: a crash in between leaves a reserved, powered-off machine, never
  an unowned running one; a retried destroy wipes again). A machine not reserved is done.
  A replaced machine (``destroy_for_replacement``: a re-image) is not wiped: it is powered off
  and kept as its group's, taken first by the group's next create; another group taking it
  boots the releasing group's wipe profile first.
* address: the inventory's ``address`` (and ``ports`` forwarded by a NAT in virtual labs).

Provider options: ``lab`` (the lab file), ``state`` (the directory ``provision serve --state``
serves: published images and reservations), ``powerTimeout`` (60 s), ``shutdownTimeout`` (60 s:
how long an orderly shutdown may take before the machine is forced off; 0 forces at once),
``efi`` (false),
``diskBootSize`` / ``diskDataSize`` (the installed disk's partitions: 256M / 1G),
``wipeTimeout`` (10 m). Group properties: ``selector``, ``wipe``, and ``userData`` /
``sshKeys``, kept in the reservation and served as the machine's metadata (boot.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from provision import schema
from provision.clock import Clock
from provision.providers.metal.bmc import (
    PowerControl,
    connect_bmc,
    power_off_in_order,
    wait_power,
)
from provision.providers.metal.images import LocalDiskLayout, disk_image_path
from provision.providers.metal.lab import NAME, USER_DATA_MAX, Bmc, Lab, Machine, load_lab
from provision.providers.metal.reservations import (
    Reservation,
    locked_reservations,
    read_reservations,
)
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_GROUP,
    CreateRequest,
    Instance,
    InstanceState,
    Page,
    ProviderError,
    TransientProviderError,
)
from provision.reconcile.spec import ProviderSpec, parse_duration
from provision.schema import Field, Schema


def _selector(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict) or len(value) > 32:
        return None
    ok = all(
        isinstance(k, str) and isinstance(v, str | int) and not isinstance(v, bool)
        for k, v in value.items()
    )
    return {k: str(v) for k, v in value.items()} if ok else None


def _user_data(value: Any) -> str | dict[str, Any] | None:
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        value = dict(value)
    elif not isinstance(value, str):
        return None
    return value if len(json.dumps(value).encode()) <= USER_DATA_MAX else None


def user_data_text(value: Any) -> str:
    """The user data as the machine reads it: a string as it is, a mapping as its JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True) if value else ""


_MIB_TEXT = re.compile(r"([0-9]+)([MG])")


def mebibytes(low: int, high: int) -> Callable[[Any], int | None]:
    """``64M`` / ``2G`` (or a whole number of MiB) from ``low`` to ``high`` MiB."""

    def parse(value: Any) -> int | None:
        mib: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            mib = value
        elif isinstance(value, str) and (match := _MIB_TEXT.fullmatch(value.strip())):
            mib = int(match.group(1)) * (1024 if match.group(2) == "G" else 1)
        return mib if mib is not None and low <= mib <= high else None

    return parse


OPTIONS = Schema(
    {
        "lab": Field(
            "the lab file (inventory, profiles, groups)", schema.text(max_len=4096), required=True
        ),
        "state": Field(
            "a directory (what provision serve --state serves)",
            schema.text(max_len=4096),
            required=True,
        ),
        "powerTimeout": Field(
            "a duration from 1s to 10m", schema.duration(1.0, 600.0), doc="default 60s"
        ),
        "shutdownTimeout": Field(
            "a duration from 0s to 1h (an orderly shutdown before a forced power-off; 0s: forced)",
            schema.duration(0.0, 3600.0),
            doc="default 60s",
        ),
        "efi": Field(
            "true or false (network boot in UEFI mode)", schema.boolean, doc="default false"
        ),
        "pageSize": Field(
            "a whole number from 1 to 10000", schema.integer(1, 10_000), doc="default 50"
        ),
        "diskBootSize": Field(
            "a size from 16M to 4G (the boot partition of installed disks)",
            mebibytes(16, 4096),
            doc="default 256M",
        ),
        "diskDataSize": Field(
            "a size from 8M to 16384G (the provision-data partition of installed disks)",
            mebibytes(8, 16 << 20),
            doc="default 1G",
        ),
        "wipeTimeout": Field(
            "a duration from 1s to 24h", schema.duration(1.0, 86_400.0), doc="default 10m"
        ),
    }
)
PROPERTIES = Schema(
    {
        "selector": Field("a mapping of machine label to value, e.g. {rack: a}", _selector),
        "cmdline": Field(
            "a string (appended to the image's kernel command line)", schema.text(max_len=4096)
        ),
        "wipe": Field(
            "a profile name of the lab file (booted once by destroy, to wipe the disk)",
            schema.text(NAME.pattern, max_len=64),
        ),
        "userData": Field(
            f"text or a mapping (a JSON tree) of at most {USER_DATA_MAX} bytes as JSON "
            "(the machine's metadata from provision serve)",
            _user_data,
        ),
        "sshKeys": Field(
            "a list of SSH public keys, one line each",
            schema.list_of(schema.text(r"[^\n\r\0]+", max_len=8192), max_items=100),
        ),
    }
)

BmcFactory = Callable[[Bmc, Path], PowerControl]


class MetalProvider:
    def __init__(
        self,
        lab_file: Path,
        state: Path,
        clock: Clock,
        *,
        name: str = "metal",
        power_timeout: float = 60.0,
        efi: bool = False,
        page_size: int = 50,
        disk_layout: LocalDiskLayout | None = None,
        wipe_timeout: float = 600.0,
        shutdown_timeout: float = 60.0,
        bmc_factory: BmcFactory = connect_bmc,
    ) -> None:
        self.name = name
        self.lab_file = lab_file
        self.state = state
        self.clock = clock
        self.power_timeout = power_timeout
        self.efi = efi
        self.bmc_factory = bmc_factory
        self.page_size = page_size
        self.disk_layout = disk_layout or LocalDiskLayout("efi" if efi else "bios")
        self.wipe_timeout = wipe_timeout
        self.shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()

    def lab(self) -> Lab:
        return load_lab(self.lab_file)

    def _machine(self, lab: Lab, name: str) -> Machine:
        machine = next((m for m in lab.machines if m.name == name), None)
        if machine is None:
            raise ProviderError(
                f"machine {name!r} is reserved but no longer in the lab file {self.lab_file}"
            )
        return machine

    def _bmc(self, machine: Machine) -> PowerControl:
        if machine.bmc is None:
            raise ProviderError(
                f"machine {machine.name!r} has no bmc in {self.lab_file}: it cannot be powered"
            )
        return self.bmc_factory(machine.bmc, self.lab_file.parent)

    # -- create ---------------------------------------------------------------------------

    def create_instance(self, request: CreateRequest) -> Instance:
        lab = self.lab()
        wanted = _selector(request.properties.get("selector", {})) or {}
        wipe = str(request.properties.get("wipe", ""))
        if wipe and wipe not in lab.profiles:
            raise ProviderError(
                f"the wipe profile {wipe!r} is not a profile of {self.lab_file}",
                hint="add it under profiles: (a kernel and initrd whose command line has "
                "provision.wipe=DEVICE)",
            )
        install = disk_image_path(self.state, request.image, self.disk_layout) or ""
        with self._lock, locked_reservations(self.state) as reserved:
            mine = next(
                (r for r in reserved.values() if r.key == request.key and not r.released), None
            )
            fresh = mine is None
            if mine is None:
                group = _group_of(request.tags)
                free = sorted(
                    (
                        m
                        for m in lab.machines
                        if (m.name not in reserved or reserved[m.name].released)
                        and all(m.labels.get(k) == v for k, v in wanted.items())
                    ),
                    key=lambda m: (_preference(reserved.get(m.name), group), m.name),
                )
                if not free:
                    raise ProviderError(
                        f"no free machine in {self.lab_file} matches {wanted or 'any'}",
                        hint="add machines to the inventory or lower the group's size",
                    )
                mine = Reservation(
                    request.key,
                    free[0].name,
                    request.image,
                    request.name,
                    dict(request.tags),
                    self.clock.now(),
                    install if free[0].disk else "",
                    wipe,
                    wiping=_inherited_wipe(reserved.get(free[0].name), group, lab),
                    user_data=user_data_text(request.properties.get("userData")),
                    ssh_keys=tuple(request.properties.get("sshKeys") or ()),
                )
                reserved[mine.machine] = mine
        bmc = self._bmc(self._machine(lab, mine.machine))
        if mine.wiping:  # another group's data on its disk: wiped before this image boots
            self._boot_wipe(bmc)
            with self._lock, locked_reservations(self.state) as reserved:
                current = reserved.get(mine.machine)
                if current is not None and current.key == mine.key:
                    reserved[mine.machine] = mine = replace(current, wiping="")
            fresh = True
        on = bmc.power_state() == "on"
        if fresh or not on:  # a retry finds its machine; it boots again only if it is off
            if on:  # shut down in order (its disk's data written), then booted from the network
                self._power_off(bmc)
            bmc.boot_from_network(efi=self.efi)  # after: IPMI's boot flags expire in 60 s
            bmc.power_on()
            wait_power(bmc, "on", self.power_timeout, self.clock.sleep)
        return self._instance(mine, InstanceState.RUNNING)

    def _instance(self, reservation: Reservation, state: InstanceState) -> Instance:
        return Instance(
            reservation.machine,
            reservation.name or reservation.machine,
            dict(reservation.tags),
            reservation.image,
            reservation.created_at,
            state,
        )

    # -- list -----------------------------------------------------------------------------

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        lab = self.lab()
        matching = sorted(
            (
                r
                for r in read_reservations(self.state).values()
                if not r.released and all(r.tags.get(k) == v for k, v in tags.items())
            ),
            key=lambda r: r.machine,
        )
        if page_token is not None:
            matching = [r for r in matching if r.machine > page_token]
        page, more = matching[: self.page_size], len(matching) > self.page_size
        found = []
        for r in page:
            machine = next((m for m in lab.machines if m.name == r.machine), None)
            on = (
                machine is not None
                and machine.bmc is not None
                and self._bmc(machine).power_state() == "on"
            )
            found.append(
                self._instance(r, InstanceState.RUNNING if on else InstanceState.TERMINATED)
            )
        return Page(tuple(found), page[-1].machine if more else None)

    # -- destroy --------------------------------------------------------------------------

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        """The machine leaves the cluster: wiped first when its group names a wipe profile."""
        self._destroy(instance_id, replacing=False)

    def destroy_for_replacement(self, instance_id: str, epoch: int) -> None:
        """The machine is replaced (a re-image): no wipe, and the machine stays marked as its
        group's, so the group's next create takes it again, disk data and all."""
        self._destroy(instance_id, replacing=True)

    def _destroy(self, instance_id: str, *, replacing: bool) -> None:
        reservation = read_reservations(self.state).get(instance_id)
        if reservation is None or reservation.released:
            return
        lab = self.lab()
        machine = next((m for m in lab.machines if m.name == instance_id), None)
        if machine is not None and machine.bmc is not None:
            bmc = self._bmc(machine)
            if not replacing and reservation.wipe and reservation.wipe in lab.profiles:
                self._wipe(bmc, reservation)
            self._power_off(bmc)
        with self._lock, locked_reservations(self.state) as reserved:
            current = reserved.get(instance_id)
            if current is None or current.key != reservation.key:
                return
            if replacing:
                reserved[instance_id] = replace(current, released=True, wiping="")
            else:
                del reserved[instance_id]

    def _power_off(self, bmc: PowerControl) -> bool:
        """Off in order (the OS asked to shut down, forced after ``shutdown_timeout``)."""
        return power_off_in_order(bmc, self.shutdown_timeout, self.power_timeout, self.clock.sleep)

    def _wipe(self, bmc: PowerControl, reservation: Reservation) -> None:
        """Boot the reservation's wipe profile once (marked wiping, so serve answers it) and
        wait for the machine to power itself off."""
        with self._lock, locked_reservations(self.state) as reserved:
            current = reserved.get(reservation.machine)
            if current is not None and current.key == reservation.key:
                reserved[reservation.machine] = replace(current, wiping=reservation.wipe)
        self._boot_wipe(bmc)

    def _boot_wipe(self, bmc: PowerControl) -> None:
        """Network-boot the machine (its reservation says which wipe profile) and wait up to
        ``wipe_timeout`` for it to power itself off, which is how a wipe says it is done."""
        bmc.boot_from_network(efi=self.efi)
        if bmc.power_state() == "on":
            bmc.reset()
        else:
            bmc.power_on()
            wait_power(bmc, "on", self.power_timeout, self.clock.sleep)
        with contextlib.suppress(TransientProviderError):  # not done in time: powered off anyway
            wait_power(bmc, "off", self.wipe_timeout, self.clock.sleep)

    # -- address --------------------------------------------------------------------------

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        machine = next((m for m in self.lab().machines if m.name == instance.id), None)
        if machine is None or not machine.address:
            return None
        return machine.address, machine.ports.get(port, port)


def _group_of(tags: Mapping[str, str]) -> tuple[str, str]:
    return tags.get(TAG_CLUSTER, ""), tags.get(TAG_GROUP, "")


def _inherited_wipe(held: Reservation | None, group: tuple[str, str], lab: Lab) -> str:
    """The wipe profile to boot before a machine another group released (for a re-image, never
    taken back) runs this group's image: that group's, so its data never reaches another."""
    if held is None or not held.released or _group_of(held.tags) == group:
        return ""
    return held.wipe if held.wipe in lab.profiles else ""


def _preference(held: Reservation | None, group: tuple[str, str]) -> int:
    """Which free machine a create takes first: one its group released for a re-image (its
    disk holds the group's data), then never-held ones, then those other groups released."""
    if held is None:
        return 1
    return 0 if _group_of(held.tags) == group else 2


def create_metal_provider(spec: ProviderSpec, clock: Clock) -> MetalProvider:
    options = spec.options
    lab = Path(str(options["lab"]))
    state = Path(str(options["state"]))
    return MetalProvider(
        lab if lab.is_absolute() else spec.base / lab,
        state if state.is_absolute() else spec.base / state,
        clock,
        name=spec.name,
        power_timeout=parse_duration(options.get("powerTimeout", 60)) or 60.0,
        efi=bool(options.get("efi", False)),
        page_size=int(options.get("pageSize", 50)),
        disk_layout=LocalDiskLayout(
            "efi" if options.get("efi", False) else "bios",
            mebibytes(16, 4096)(options.get("diskBootSize", 256)) or 256,
            mebibytes(8, 16 << 20)(options.get("diskDataSize", 1024)) or 1024,
        ),
        wipe_timeout=parse_duration(options.get("wipeTimeout", 600)) or 600.0,
        shutdown_timeout=_seconds(options.get("shutdownTimeout"), 60.0),
    )


def _seconds(value: Any, default: float) -> float:
    """A duration option (0 allowed), or ``default`` when it is not given."""
    seconds = None if value is None else parse_duration(value)
    return default if seconds is None else seconds
