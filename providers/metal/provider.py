"""The ``metal`` provider: a cluster's machines are machines of the lab's inventory.

* create: reserve a free machine whose labels match the group's ``properties.selector`` (the
  reservation is named by the idempotency key, so a retried create finds the same machine),
  point it at the image (``provision serve`` answers its iPXE request with that image), set a
  one-time network boot through its BMC and power it on (or reset it when it is on). A retry of
  a create whose machine is still off boots it again.
* list: the reserved machines carrying the tags, with their power state (off = terminated).
* destroy: power the machine off, then release it (in that order: a crash in between leaves a
  reserved, powered-off machine, never an unowned running one). A machine not reserved is done.
* address: the inventory's ``address`` (and ``ports`` forwarded by a NAT in virtual labs).

Provider options: ``lab`` (the lab file), ``state`` (the directory ``provision serve --state``
serves: published images and reservations), ``powerTimeout`` (60 s), ``efi`` (false).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from provision import schema
from provision.clock import Clock
from provision.providers.metal.bmc import PowerControl, connect_bmc, wait_power
from provision.providers.metal.lab import Bmc, Lab, Machine, load_lab
from provision.providers.metal.reservations import (
    Reservation,
    locked_reservations,
    read_reservations,
)
from provision.reconcile.provider import (
    CreateRequest,
    Instance,
    InstanceState,
    Page,
    ProviderError,
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
        "efi": Field(
            "true or false (network boot in UEFI mode)", schema.boolean, doc="default false"
        ),
        "pageSize": Field(
            "a whole number from 1 to 10000", schema.integer(1, 10_000), doc="default 50"
        ),
    }
)
PROPERTIES = Schema(
    {
        "selector": Field("a mapping of machine label to value, e.g. {rack: a}", _selector),
        "cmdline": Field(
            "a string (appended to the image's kernel command line)", schema.text(max_len=4096)
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
        with self._lock, locked_reservations(self.state) as reserved:
            mine = next((r for r in reserved.values() if r.key == request.key), None)
            fresh = mine is None
            if mine is None:
                free = sorted(
                    (
                        m
                        for m in lab.machines
                        if m.name not in reserved
                        and all(m.labels.get(k) == v for k, v in wanted.items())
                    ),
                    key=lambda m: m.name,
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
                )
                reserved[mine.machine] = mine
        bmc = self._bmc(self._machine(lab, mine.machine))
        on = bmc.power_state() == "on"
        if fresh or not on:  # a retry finds its machine; it boots again only if it is off
            bmc.boot_from_network(efi=self.efi)
            if on:
                bmc.reset()
            else:
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
                if all(r.tags.get(k) == v for k, v in tags.items())
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
        reservation = read_reservations(self.state).get(instance_id)
        if reservation is None:
            return
        machine = next((m for m in self.lab().machines if m.name == instance_id), None)
        if machine is not None and machine.bmc is not None:
            bmc = self._bmc(machine)
            if bmc.power_state() == "on":
                bmc.power_off()
                wait_power(bmc, "off", self.power_timeout, self.clock.sleep)
        with self._lock, locked_reservations(self.state) as reserved:
            if reserved.get(instance_id) == reservation:
                del reserved[instance_id]

    # -- address --------------------------------------------------------------------------

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        machine = next((m for m in self.lab().machines if m.name == instance.id), None)
        if machine is None or not machine.address:
            return None
        return machine.address, machine.ports.get(port, port)


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
    )
