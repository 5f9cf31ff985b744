"""Machines are powered off in order: the BMC asks the operating system to shut down (Redfish
GracefulShutdown when the system offers it, IPMI ``chassis power soft``), and only a machine
still on after the provider's ``shutdownTimeout`` is forced off. Against a wire-level Redfish
service, pyghmi's IPMI BMC driven by ipmitool, and the metal provider over the tests' Redfish
service of paper machines."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from metal_testkit import PASSWORD, RedfishLab, lab_file_text
from test_metal_disks import PaperMachine, request, write_artifact

from provision.clock import SystemClock
from provision.providers import get_target
from provision.providers.metal.bmc import IpmiBmc, RedfishBmc, power_off_in_order
from provision.providers.metal.provider import OPTIONS, MetalProvider
from provision.reconcile.provider import ProviderError, TransientProviderError
from provision.reconcile.spec import ProviderSpec
from provision.schema import check_mapping

GRACEFUL_AND_FORCE = ["On", "ForceOff", "ForceRestart", "GracefulShutdown"]


@dataclass
class System:
    """One Redfish ComputerSystem: its power, the reset types it lists (None: it lists none),
    whether its OS honours the power button, a status forced on GracefulShutdown, and the
    ResetTypes posted to it."""

    allowed: list[str] | None = field(default_factory=lambda: list(GRACEFUL_AND_FORCE))
    honours_button: bool = True
    graceful_status: int = 204
    powered: bool = True
    posted: list[str] = field(default_factory=list)


@pytest.fixture
def redfish() -> Iterator[tuple[System, str]]:
    system = System()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: Any = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            reset: dict[str, Any] = {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"}
            if system.allowed is not None:
                reset["ResetType@Redfish.AllowableValues"] = system.allowed
            state = "On" if system.powered else "Off"
            self._reply(200, {"PowerState": state, "Actions": {"#ComputerSystem.Reset": reset}})

        def do_POST(self) -> None:  # noqa: N802
            kind = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["ResetType"]
            system.posted.append(kind)
            if kind == "GracefulShutdown" and system.graceful_status != 204:
                self._reply(system.graceful_status, {"error": "refused"})
            elif system.allowed is not None and kind not in system.allowed:
                self._reply(400, {"error": f"{kind} is not allowed"})
            else:
                if kind == "ForceOff":
                    system.powered = False
                elif kind == "GracefulShutdown" and system.honours_button:
                    threading.Timer(0.3, lambda: setattr(system, "powered", False)).start()
                self._reply(204)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield system, f"http://127.0.0.1:{server.server_address[1]}/redfish/v1/Systems/1"
    finally:
        server.shutdown()
        server.server_close()


def test_redfish_shuts_down_in_order_first(redfish: tuple[System, str]) -> None:
    system, url = redfish
    assert power_off_in_order(RedfishBmc(url), 10, 5) is True
    assert system.posted == ["GracefulShutdown"] and not system.powered


def test_redfish_forces_off_a_machine_still_on_after_the_bound(
    redfish: tuple[System, str],
) -> None:
    system, url = redfish
    system.honours_button = False
    started = time.monotonic()
    assert power_off_in_order(RedfishBmc(url), 1.5, 5) is False
    assert 1.5 <= time.monotonic() - started < 5
    assert system.posted == ["GracefulShutdown", "ForceOff"] and not system.powered


@pytest.mark.parametrize(
    ("allowed", "status", "posted"),
    [
        (["On", "ForceOff"], 204, ["ForceOff"]),  # not offered: not even asked
        (None, 400, ["GracefulShutdown", "ForceOff"]),  # lists nothing, refuses it: forced
    ],
)
def test_redfish_forces_off_when_graceful_is_not_offered(
    redfish: tuple[System, str], allowed: list[str] | None, status: int, posted: list[str]
) -> None:
    system, url = redfish
    system.allowed, system.graceful_status = allowed, status
    started = time.monotonic()
    assert power_off_in_order(RedfishBmc(url), 30, 5) is False
    assert time.monotonic() - started < 5 and system.posted == posted and not system.powered


def test_redfish_shutdown_errors_map_to_the_error_classes(redfish: tuple[System, str]) -> None:
    system, url = redfish
    system.graceful_status = 503
    with pytest.raises(TransientProviderError):
        power_off_in_order(RedfishBmc(url), 30, 5)
    system.graceful_status = 409  # offered, then refused with something else than 400
    with pytest.raises(ProviderError, match="GracefulShutdown failed") as refused:
        power_off_in_order(RedfishBmc(url), 30, 5)
    assert not isinstance(refused.value, TransientProviderError)
    assert system.posted == ["GracefulShutdown"] * 2 and system.powered  # never forced blindly


def test_an_off_machine_is_left_alone(redfish: tuple[System, str]) -> None:
    system, url = redfish
    system.powered = False
    assert power_off_in_order(RedfishBmc(url), 30, 5) is True and system.posted == []


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("button", "in_order", "chassis"),
    [("honoured", True, ["soft"]), ("ignored", False, ["soft", "off"]), ("absent", False, ["off"])],
)
def test_ipmi_soft_first_then_off(
    tmp_path: Path, button: str, in_order: bool, chassis: list[str]
) -> None:
    (tmp_path / "pass").write_text(PASSWORD[:20])
    port = free_udp_port()
    bmc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("ipmi_paper_bmc.py")),
            *("--port", str(port), "--password-file", str(tmp_path / "pass")),
            *("--button", button),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert bmc.stdout is not None and bmc.stdout.readline().strip() == "BMC-READY"
    try:
        control = IpmiBmc(f"127.0.0.1:{port}", "admin", PASSWORD[:20])
        assert power_off_in_order(control, 3, 10) is in_order
        assert control.power_state() == "off"
    finally:
        bmc.terminate()
        out, _ = bmc.communicate(timeout=20)
    assert out.split() == chassis


@dataclass
class ButtonMachine(PaperMachine):
    """A paper machine whose OS shuts down on the power button, or ignores it."""

    honours_button: bool = True
    presses: int = 0

    def press_power_button(self) -> None:
        self.presses += 1
        if self.honours_button:
            self.power_off()


@pytest.fixture
def paper_lab(tmp_path: Path) -> Iterator[tuple[MetalProvider, list[ButtonMachine]]]:
    machines = [
        ButtonMachine(
            "node-1",
            "52:54:00:d2:00:01",
            tmp_path / "node-1",
            "-",
            disk=tmp_path / "unused.disk",
            state=tmp_path / "metal-state",
            lab=tmp_path / "lab.yml",
        )
    ]
    redfish = RedfishLab(list(machines))
    (tmp_path / "bmc.pass").write_text(PASSWORD)
    (tmp_path / "lab.yml").write_text(lab_file_text(list(machines), redfish, tmp_path / "bmc.pass"))
    options = {
        "lab": "lab.yml",
        "state": "metal-state",
        "powerTimeout": "5s",
        "shutdownTimeout": "1s",
        "diskBootSize": "16M",
        "diskDataSize": "8M",
    }
    provider = get_target("metal").create_provider(
        ProviderSpec("lab", "metal", options=options, base=tmp_path), SystemClock()
    )
    assert isinstance(provider, MetalProvider) and provider.shutdown_timeout == 1.0
    yield provider, machines
    redfish.server.shutdown()
    redfish.server.server_close()


@pytest.mark.parametrize(("replacing", "honours"), [(True, True), (False, True), (True, False)])
def test_destroy_shuts_the_machine_down_in_order(
    paper_lab: tuple[MetalProvider, list[ButtonMachine]],
    tmp_path: Path,
    replacing: bool,
    honours: bool,
) -> None:
    provider, (machine,) = paper_lab
    image = write_artifact(tmp_path / "build", 1)
    get_target("metal").publish(provider, image)
    created = provider.create_instance(request("a", "web", image.digest))
    assert machine.on() and machine.presses == 0
    machine.honours_button = honours
    started = time.monotonic()
    if replacing:
        provider.destroy_for_replacement(created.id, 1)
    else:
        provider.destroy_instance(created.id, 1)
    took = time.monotonic() - started
    assert machine.presses == 1 and not machine.on()
    assert took < 1.0 if honours else 1.0 <= took < 5.0, took  # forced after shutdownTimeout


def test_create_shuts_a_running_machine_down_before_booting_it(
    paper_lab: tuple[MetalProvider, list[ButtonMachine]], tmp_path: Path
) -> None:
    provider, (machine,) = paper_lab
    image = write_artifact(tmp_path / "build", 1)
    get_target("metal").publish(provider, image)
    machine.power_on()  # left running by someone: its disk's data is written before the boot
    provider.create_instance(request("a", "web", image.digest))
    assert machine.presses == 1 and machine.on() and machine.power_ons == 2
    first, last = machine.answers[0], machine.answers[-1]
    assert "web" not in first and "web" in last, (first, last)  # booted into the group's image


def test_the_shutdown_bound_is_an_option_checked_by_the_schema() -> None:
    base = {"lab": "lab.yml", "state": "s"}
    assert check_mapping(OPTIONS, {**base, "shutdownTimeout": "0s"}) == []
    assert check_mapping(OPTIONS, {**base, "shutdownTimeout": "90s"}) == []
    for bad in ("2h", "-1s", "soon", True):
        (problem,) = check_mapping(OPTIONS, {**base, "shutdownTimeout": bad})
        assert problem.path == ("shutdownTimeout",) and "0s to 1h" in problem.message
