"""Real firmware on a network of its own: inside a network namespace, `provision serve` is the
only DHCP server (--dhcp full) and also serves TFTP; a disk-less QEMU machine on a tap device
PXE-boots with its NIC's own firmware (iPXE from Debian's ipxe-qemu): DHCP hands it an address
from the pool and the boot script URL, and it boots the kernel and initrd its group names.
Nothing leaves the namespace."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_e2e.standin import write_standin

pytestmark = [pytest.mark.boot, pytest.mark.timeout(240)]
MAC = "52:54:00:1d:00:01"
SERVER = "192.168.77.1"


def netns(name: str, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, *argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        **kwargs,
    )  # type: ignore[call-overload]


@pytest.fixture
def lab_network(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces and a tap device)")
    name = f"pv-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        netns(name, "ip", "link", "set", "lo", "up")
        netns(name, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap")
        netns(name, "ip", "addr", "add", f"{SERVER}/24", "dev", "tap0")
        netns(name, "ip", "link", "set", "tap0", "up")
        netns(name, "ip", "route", "add", "default", "dev", "tap0")  # for DHCP's broadcast replies
        yield name, tmp_path
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def test_firmware_pxe_boots_from_serve_as_the_only_dhcp_server(
    lab_network: tuple[str, Path],
) -> None:
    name, tmp = lab_network
    root = tmp / "root"
    root.mkdir()
    prefix = write_standin(root, "netns")
    kernel = root / "standin-kernel"
    data = kernel.read_bytes()  # a real file in the root (serve refuses symlinks out of it)
    kernel.unlink()
    kernel.write_bytes(data)
    (tmp / "lab.yml").write_text(f"""\
profiles:
  standin: {{kernel: standin-kernel, initrd: [standin-initrd.img], cmdline: "console=ttyS0 panic=-1"}}
groups:
  - {{name: lab, profile: standin, selector: {{mac: "{MAC}"}}}}
machines:
  - {{name: node-1, macs: ["{MAC}"]}}
""")
    assert prefix.name == "standin"
    serve_log = open(tmp / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            name,
            sys.executable,
            "-m",
            "provision",
            "-v",
            "serve",
            "--lab",
            str(tmp / "lab.yml"),
            "--root",
            str(root),
            "--listen",
            f"{SERVER}:8080",
            "--tftp",
            f"{SERVER}:69",
            "--dhcp",
            "full",
            "--boot-server",
            SERVER,
            "--dhcp-pool",
            "192.168.77.10-192.168.77.20",
        ],
        cwd=Path(__file__).resolve().parents[2],
        stdout=serve_log,
        stderr=serve_log,
    )
    serial = tmp / "serial.log"
    vm = None
    try:
        time.sleep(2)
        assert serve.poll() is None, (tmp / "serve.log").read_text()
        vm = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                name,
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-m",
                "256",
                "-display",
                "none",
                "-no-user-config",
                "-nodefaults",
                "-serial",
                f"file:{serial}",
                "-netdev",
                "tap,id=n0,ifname=tap0,script=no,downscript=no",
                "-device",
                f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1",
                "-boot",
                "n",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 150
        while "STANDIN-READY" not in (
            serial.read_text(errors="replace") if serial.exists() else ""
        ):
            assert time.monotonic() < deadline, (tmp / "serve.log").read_text()[-3000:]
            assert vm.poll() is None
            time.sleep(1)
        log = (tmp / "serve.log").read_text()
        assert f"dhcp {MAC}: offer 192.168.77.10" in log and f"dhcp {MAC}: ack 192.168.77.10" in log
        assert (
            f"http://{SERVER}:8080/boot.ipxe" in log
        )  # the firmware is iPXE: it got the HTTP script
    finally:
        if vm is not None:
            vm.kill()
            vm.wait()
        serve.terminate()
        serve.wait(timeout=10)
        serve_log.close()
