"""Power and boot device over IPMI: ipmitool (through the metal target's IpmiBmc) against a
real IPMI 2.0 BMC (pyghmi's server) that powers a disk-less QEMU machine; the machine then
network-boots from provision serve, which sees it ask for its script."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from provision.providers.metal.bmc import IpmiBmc, wait_power
from provision.providers.metal.lab import parse_lab
from provision.providers.metal.server import ServeState, start_http
from provision.reconcile.provider import ProviderError, TransientProviderError

pytestmark = [pytest.mark.boot, pytest.mark.timeout(300)]
MAC = "52:54:00:1b:00:01"
PASSWORD = "IPMI-PW-MARK-77"  # IPMI passwords are at most 20 bytes


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ipmi_lab(tmp_path: Path) -> Iterator[tuple[str, str]]:
    lab = parse_lab(f'default: exit\nmachines:\n  - {{name: ipmi-node, macs: ["{MAC}"]}}\n', "lab")
    server, stop = start_http(ServeState(lab, tmp_path))
    serve_url = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp_path / "pass").write_text(PASSWORD)
    port = free_udp_port()
    bmc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("ipmi_lab.py")),
            "--port",
            str(port),
            "--mac",
            MAC,
            "--boot-url",
            f"http://10.0.2.2:{server.server_address[1]}/boot.ipxe",
            "--dir",
            str(tmp_path / "vm"),
            "--password-file",
            str(tmp_path / "pass"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert bmc.stdout is not None and bmc.stdout.readline().strip() == "BMC-READY"
    try:
        yield f"127.0.0.1:{port}", serve_url
    finally:
        bmc.terminate()
        bmc.wait(timeout=20)
        stop()


def test_ipmi_powers_the_machine_which_then_network_boots(
    ipmi_lab: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    address, serve_url = ipmi_lab
    caplog.set_level(logging.DEBUG)
    control = IpmiBmc(address, "admin", PASSWORD)
    assert control.power_state() == "off"
    control.boot_from_network(efi=False)
    control.power_on()
    wait_power(control, "on", 30)
    deadline = time.monotonic() + 90
    while not any(b["mac"] == MAC for b in requests.get(f"{serve_url}/v1/boots", timeout=5).json()):
        assert time.monotonic() < deadline, "the machine never asked provision serve for its script"
        time.sleep(1)
    control.power_off()
    wait_power(control, "off", 30)
    assert (
        PASSWORD not in caplog.text
    )  # the commands were logged; the password is in the environment only
    assert "ipmitool -v -I lanplus" in caplog.text


def test_ipmi_errors_decide_the_retry(ipmi_lab: tuple[str, str]) -> None:
    address, _ = ipmi_lab
    with pytest.raises(ProviderError) as refused:
        IpmiBmc(address, "admin", "wrong password").power_state()
    assert not isinstance(refused.value, TransientProviderError)
    with pytest.raises(TransientProviderError):
        IpmiBmc(f"127.0.0.1:{free_udp_port()}", "admin", PASSWORD).power_state()
    with pytest.raises(ProviderError, match="at most 20 bytes"):
        IpmiBmc(address, "admin", "x" * 21).power_state()
