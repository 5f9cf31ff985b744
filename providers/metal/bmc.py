"""Power and boot device through a machine's BMC: Redfish (plain HTTP) or IPMI (ipmitool).

Both set a one-time network boot, power on, reset and power off, and report the power state.
A machine is powered off in order (``power_off_in_order``): its operating system is asked to
shut down first (Redfish ``GracefulShutdown`` when the system's
``ResetType@Redfish.AllowableValues`` offers it, IPMI ``chassis power soft``: the ACPI power
button), and forced off only when it is still on after a bound, so what it had not yet written
to disk is not lost.
Quirks users hit with real BMCs are handled as Ironic handles them: a BMC that refuses
``BootSourceOverrideEnabled: Once`` gets ``Continuous`` (and the caller restores the disk
after the boot); ``BootSourceOverrideMode`` is sent again with the target because some BMCs
reset it to BIOS when the device changes; power changes take seconds, so they are polled with a
bound. Errors map to the engine's classes: a BMC that cannot be reached or answers 5xx is
transient, a refusal (4xx, a bad password) is permanent. Passwords come from a file or an
environment variable and are never logged; ipmitool reads its password from ``IPMI_PASSWORD``
(``-E``), never from its argv.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests

from provision.errors import CommandError, ProvisionError
from provision.providers.metal.lab import Bmc
from provision.reconcile.provider import ProviderError, TransientProviderError
from provision.runner import run
from provision.spec.source import read_text_file

IPMITOOL = "ipmitool"


class PowerControl(Protocol):
    def power_state(self) -> str:
        """``on`` or ``off``."""
        ...

    def boot_from_network(self, *, efi: bool) -> None: ...

    def power_on(self) -> None: ...

    def reset(self) -> None: ...

    def power_off(self) -> None:
        """Forced off, at once."""
        ...

    def shut_down(self) -> bool:
        """Ask the operating system to shut down in order (the ACPI power button); False when
        the BMC does not offer it."""
        ...


def read_password(bmc: Bmc, base: Path) -> str:
    """The BMC password from its file (relative to the lab file) or environment variable."""
    if bmc.password_env:
        value = os.environ.get(bmc.password_env)
        if value is None:
            raise ProvisionError(
                f"BMC {bmc.address}: the environment variable {bmc.password_env} is not set"
            )
        return value
    if bmc.password_file:
        path = Path(bmc.password_file)
        path = path if path.is_absolute() else base / path
        text, problems = read_text_file(path)  # a regular file, bounded
        if text is None:
            raise ProvisionError(f"BMC {bmc.address}: the password file {problems[0]}")
        return text.strip()
    return ""


def wait_power(
    control: PowerControl, wanted: str, timeout: float, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Poll until the power state is ``wanted``; a TransientProviderError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        state = control.power_state()
        if state == wanted:
            return
        if time.monotonic() > deadline:
            raise TransientProviderError(
                f"power is still {state!r} after {timeout:g}s (wanted {wanted!r})"
            )
        sleep(0.5)


def power_off_in_order(
    control: PowerControl,
    shutdown_timeout: float,
    power_timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Power a machine off: asked to shut down in order first, then, when the BMC does not
    offer that or the machine is still on after ``shutdown_timeout`` (0: no wait), forced off
    and polled up to ``power_timeout``. True when it went off in order (or was off)."""
    if control.power_state() != "on":
        return True
    if shutdown_timeout > 0 and control.shut_down():
        with contextlib.suppress(TransientProviderError):  # still on: forced off below
            wait_power(control, "off", shutdown_timeout, sleep)
            return True
    control.power_off()
    wait_power(control, "off", power_timeout, sleep)
    return False


@dataclass
class RedfishBmc:
    """A Redfish ``ComputerSystem`` at ``address`` (its URL, e.g. .../redfish/v1/Systems/1)."""

    address: str
    username: str = ""
    password: str = ""
    timeout: float = 10.0

    def __post_init__(self) -> None:
        self._session = requests.Session()
        if self.username:
            self._session.auth = (self.username, self.password)

    def __repr__(self) -> str:  # the password never shows, even in a traceback's locals
        return f"RedfishBmc({self.address!r}, username={self.username!r})"

    def _call(
        self, method: str, url: str, body: dict[str, object] | None = None
    ) -> requests.Response:
        try:
            response = self._session.request(method, url, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise TransientProviderError(f"BMC {self.address}: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise TransientProviderError(
                f"BMC {self.address}: HTTP {response.status_code} on {method}"
            )
        if response.status_code in (401, 403):
            raise ProviderError(
                f"BMC {self.address}: credentials refused (HTTP {response.status_code})",
                hint="check the machine's bmc username and passwordFile / passwordEnv",
            )
        return response

    def _system(self) -> dict[str, Any]:
        response = self._call("GET", self.address)
        if response.status_code != 200:
            raise ProviderError(
                f"BMC {self.address}: HTTP {response.status_code} reading the system"
            )
        try:
            body = response.json()
            if not isinstance(body, dict) or "PowerState" not in body:
                raise ValueError("no PowerState")
        except ValueError as exc:
            raise ProviderError(f"BMC {self.address}: not a Redfish ComputerSystem") from exc
        return body

    def power_state(self) -> str:
        state = str(self._system()["PowerState"]).lower()
        return "on" if state in ("on", "poweringon") else "off"

    def reset_types(self) -> list[str] | None:
        """The system's ``ResetType@Redfish.AllowableValues``; None when it does not say."""
        action = self._system().get("Actions", {})
        action = action.get("#ComputerSystem.Reset") if isinstance(action, dict) else None
        allowed = (
            action.get("ResetType@Redfish.AllowableValues") if isinstance(action, dict) else None
        )
        return [str(v) for v in allowed] if isinstance(allowed, list) else None

    def boot_from_network(self, *, efi: bool) -> None:
        boot: dict[str, object] = {
            "BootSourceOverrideTarget": "Pxe",
            "BootSourceOverrideEnabled": "Once",
            "BootSourceOverrideMode": "UEFI" if efi else "Legacy",
        }
        response = self._call("PATCH", self.address, {"Boot": boot})
        if response.status_code == 400:  # some BMCs refuse Once: Continuous, restored after boot
            boot["BootSourceOverrideEnabled"] = "Continuous"
            response = self._call("PATCH", self.address, {"Boot": boot})
        if response.status_code not in (200, 202, 204):
            raise ProviderError(
                f"BMC {self.address}: setting the boot device failed (HTTP {response.status_code})"
            )

    def _reset(self, kind: str, *, refusal_ok: bool = False) -> bool:
        response = self._call(
            "POST", f"{self.address}/Actions/ComputerSystem.Reset", {"ResetType": kind}
        )
        if refusal_ok and response.status_code == 400:
            return False
        if response.status_code not in (200, 202, 204):
            raise ProviderError(f"BMC {self.address}: {kind} failed (HTTP {response.status_code})")
        return True

    def power_on(self) -> None:
        self._reset("On")

    def reset(self) -> None:
        self._reset("ForceRestart")

    def power_off(self) -> None:
        self._reset("ForceOff")

    def shut_down(self) -> bool:
        allowed = self.reset_types()
        if allowed is not None and "GracefulShutdown" not in allowed:
            return False
        # a system that does not list its reset types may still refuse it (400): forced then
        return self._reset("GracefulShutdown", refusal_ok=allowed is None)


@dataclass
class IpmiBmc:
    """An IPMI BMC at ``host[:port]`` through ``ipmitool -I lanplus`` (cipher suite 3)."""

    address: str
    username: str = ""
    password: str = ""

    def __repr__(self) -> str:
        return f"IpmiBmc({self.address!r}, username={self.username!r})"

    def _ipmitool(self, *args: str) -> str:
        host, _, port = self.address.partition(":")
        if len(self.password.encode()) > 20:
            raise ProviderError(
                f"BMC {self.address}: IPMI passwords are at most 20 bytes",
                hint="use a shorter password, or the machine's Redfish service",
            )
        # -v: ipmitool says why a session failed only then (a refused password vs no answer)
        argv = [
            IPMITOOL,
            "-v",
            "-I",
            "lanplus",
            "-C",
            "3",
            "-H",
            host,
            "-p",
            port or "623",
            "-U",
            self.username,
            "-E",
            "-N",
            "2",
            "-R",
            "2",
            *args,
        ]
        try:
            result = run(argv, env={"IPMI_PASSWORD": self.password}, timeout=60)
        except CommandError as exc:
            text = str(exc).lower()
            if "rakp" in text or "unauthorized" in text or "invalid user" in text:
                raise ProviderError(
                    f"BMC {self.address}: credentials refused",
                    hint="check the machine's bmc username and passwordFile / passwordEnv",
                ) from exc
            if "unable to establish" in text or "timeout" in text or "no response" in text:
                raise TransientProviderError(
                    f"BMC {self.address}: no answer to ipmitool {' '.join(args)}"
                ) from exc
            raise ProviderError(f"BMC {self.address}: ipmitool {' '.join(args)} failed") from exc
        return (result.stdout or b"").decode(errors="replace")

    def power_state(self) -> str:
        return "on" if "is on" in self._ipmitool("chassis", "power", "status").lower() else "off"

    def boot_from_network(self, *, efi: bool) -> None:
        self._ipmitool("chassis", "bootdev", "pxe", *(["options=efiboot"] if efi else []))

    def power_on(self) -> None:
        self._ipmitool("chassis", "power", "on")

    def reset(self) -> None:
        self._ipmitool("chassis", "power", "reset")

    def power_off(self) -> None:
        self._ipmitool("chassis", "power", "off")

    def shut_down(self) -> bool:
        try:
            self._ipmitool("chassis", "power", "soft")
        except TransientProviderError:
            raise
        except ProviderError as exc:
            if "credentials" in str(exc):
                raise
            return False  # the BMC refused a soft shutdown: forced off then
        return True


def connect_bmc(bmc: Bmc, base: Path) -> PowerControl:
    password = read_password(bmc, base)
    if bmc.driver == "ipmi":
        return IpmiBmc(bmc.address, bmc.username, password)
    return RedfishBmc(bmc.address, bmc.username, password)
