"""The Redfish client against sushy-tools' emulator (OpenStack's Redfish test double, fake
driver): power changes that land seconds later are polled to the end, the boot override is
accepted, and refusals and outages map to the error classes that decide retries."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from provision.providers.metal.bmc import RedfishBmc, power_off_in_order, wait_power
from provision.reconcile.provider import ProviderError, TransientProviderError

UUID = "27946b59-9e44-4fa7-8e91-f3527a1ef094"
USER, PASSWORD = "admin", "REDFISH-PW-MARKER-5b2"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sushy(tmp_path: Path) -> Iterator[str]:
    hashed = subprocess.run(
        ["htpasswd", "-nbB", USER, PASSWORD], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "htpasswd").write_text(hashed)
    (tmp_path / "sushy.conf").write_text(f"""
SUSHY_EMULATOR_AUTH_FILE = {str(tmp_path / "htpasswd")!r}
SUSHY_EMULATOR_STATE_DIR = {str(tmp_path / "state")!r}
SUSHY_EMULATOR_FAKE_SYSTEMS = [{{"uuid": {UUID!r}, "name": "node", "power_state": "Off",
                                  "external_notifier": False, "nics": [{{"mac": "52:54:00:1c:00:01"}}]}}]
""")
    port = free_port()
    log = open(tmp_path / "sushy.log", "wb")  # noqa: SIM115
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sushy_tools.emulator.main",
            "--config",
            str(tmp_path / "sushy.conf"),
            "--fake",
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{base}/redfish/v1/", timeout=1).status_code in (200, 401):
                break
        except requests.RequestException:
            pass
        assert emulator.poll() is None and time.monotonic() < deadline, (
            tmp_path / "sushy.log"
        ).read_text()
        time.sleep(0.2)
    try:
        yield f"{base}/redfish/v1/Systems/{UUID}"
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
        log.close()


@pytest.mark.timeout(120)
def test_power_changes_are_polled_until_they_land(sushy: str) -> None:
    bmc = RedfishBmc(sushy, USER, PASSWORD)
    assert bmc.power_state() == "off"
    bmc.boot_from_network(efi=True)
    body = requests.get(sushy, auth=(USER, PASSWORD), timeout=5).json()
    assert body["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    bmc.power_on()
    wait_power(bmc, "on", 30)  # the emulator applies it 1-11 s later
    bmc.power_off()
    wait_power(bmc, "off", 30)
    assert PASSWORD not in repr(bmc)


def test_refusals_are_permanent_and_outages_transient(sushy: str) -> None:
    with pytest.raises(ProviderError, match="credentials refused") as refused:
        RedfishBmc(sushy, USER, "wrong").power_state()
    assert not isinstance(refused.value, TransientProviderError)
    with pytest.raises(ProviderError) as missing:
        RedfishBmc(sushy.replace(UUID, "no-such-system"), USER, PASSWORD).power_state()
    assert not isinstance(missing.value, TransientProviderError)
    with pytest.raises(TransientProviderError):
        RedfishBmc(
            f"http://127.0.0.1:{free_port()}/redfish/v1/Systems/x", USER, PASSWORD, timeout=2
        ).power_state()


@pytest.mark.timeout(120)
def test_graceful_shutdown_is_offered_and_lands(sushy: str) -> None:
    bmc = RedfishBmc(sushy, USER, PASSWORD)
    assert "GracefulShutdown" in (bmc.reset_types() or [])
    bmc.power_on()
    wait_power(bmc, "on", 30)
    assert power_off_in_order(bmc, 30, 30) is True  # the emulator applies it 1-11 s later
    assert bmc.power_state() == "off"
