"""Real firmware on a network of its own: a network namespace holding a bridge, the tap device
of a disk-less QEMU machine and `provision serve`; optionally a second namespace on the same
bridge (through a veth pair) where dnsmasq is the network's DHCP server, as on a network whose
DHCP server provision does not control. Nothing leaves the namespaces."""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cluster_e2e.standin import write_standin

MAC = "52:54:00:1d:00:01"
SERVER = "192.168.77.1"  # provision serve, on the bridge
DHCP_SERVER = "192.168.77.2"  # dnsmasq, in its own namespace
# The most an iPXE stage may take from its DHCP answer to its first fetch: generous for TCG on
# a busy machine (measured 0.06-1.0 s), far below the ~16 s iPXE 2019 waits for an IPv6 router
# when nobody answers its router solicitations (measured 16.1-17.9 s).
STAGE_WAIT_BOUND = 6.0
REPO = Path(__file__).resolve().parents[2]
OVMF_CODE, OVMF_VARS = (
    Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
    Path("/usr/share/OVMF/OVMF_VARS_4M.fd"),
)


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@dataclass
class LabNetwork:
    name: str  # the namespace of the bridge, the machine's tap and provision serve
    tmp: Path
    dhcp_name: str | None = None  # the namespace of dnsmasq, when there is one
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, log_name: str, argv: list[str], namespace: str | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / log_name, "wb")  # noqa: SIM115
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace or self.name, *argv],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.processes.append(process)
        return process

    def log(self, log_name: str) -> str:
        path = self.tmp / log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def start_dnsmasq(self, *extra: str) -> subprocess.Popen[bytes]:
        """The network's own DHCP server: addresses only (no DNS, no TFTP), and the boot files
        ``extra`` options give."""
        assert self.dhcp_name is not None
        (self.tmp / "dnsmasq.conf").write_text("")
        return self.start(
            "dnsmasq.log",
            [
                "dnsmasq",
                "--no-daemon",
                f"--conf-file={self.tmp / 'dnsmasq.conf'}",
                "--port=0",
                "--user=root",
                "--pid-file=",
                "--interface=vb",
                "--bind-interfaces",
                "--dhcp-range=192.168.77.50,192.168.77.60,255.255.255.0,1h",
                f"--dhcp-leasefile={self.tmp / 'dnsmasq.leases'}",
                "--log-dhcp",
                "--log-facility=-",
                *extra,
            ],
            namespace=self.dhcp_name,
        )

    def start_serve(self, root: Path, *extra: str) -> subprocess.Popen[bytes]:
        serve = self.start(
            "serve.log",
            [
                sys.executable,
                "-m",
                "provision",
                "-v",
                "serve",
                "--lab",
                str(self.tmp / "lab.yml"),
                "--root",
                str(root),
                "--listen",
                f"{SERVER}:8080",
                "--boot-server",
                SERVER,
                *extra,
            ],
        )
        deadline = time.monotonic() + 20
        while "serving http://" not in self.log("serve.log"):
            assert serve.poll() is None and time.monotonic() < deadline, self.log("serve.log")
            time.sleep(0.2)
        return serve

    def start_machine(self, *firmware: str, mem: str = "256") -> subprocess.Popen[bytes]:
        """A disk-less QEMU machine on the tap device; ``firmware`` picks the firmware and NIC."""
        return self.start(
            "qemu.log",
            [
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-m",
                mem,
                "-display",
                "none",
                "-no-user-config",
                "-nodefaults",
                "-serial",
                f"file:{self.tmp / 'serial.log'}",
                "-netdev",
                "tap,id=n0,ifname=tap0,script=no,downscript=no",
                *firmware,
            ],
        )

    def wait_for_serial(self, marker: str, seconds: float) -> float:
        """Seconds until ``marker`` is on the machine's serial console."""
        started = time.monotonic()
        while marker not in self.log("serial.log"):
            assert time.monotonic() - started < seconds, (
                f"no {marker} after {seconds} s\nserial: {self.log('serial.log')[-2000:]}\n"
                f"serve: {self.log('serve.log')[-3000:]}\ndnsmasq: {self.log('dnsmasq.log')[-2000:]}"
            )
            for process in self.processes:
                assert process.poll() is None, (
                    process.args,
                    self.log("qemu.log"),
                    self.log("serve.log"),
                )
            time.sleep(0.5)
        return time.monotonic() - started

    def pxe_boot_with_full_dhcp(self, *serve_extra: str) -> str:
        """serve as the only DHCP server (with TFTP, ``serve_extra`` added), a machine whose NIC
        boots first: its serve log once the stand-in image is up."""
        self.start_serve(
            write_lab(self.tmp),
            "--tftp",
            f"{SERVER}:69",
            "--dhcp",
            "full",
            "--dhcp-pool",
            "192.168.77.10-192.168.77.20",
            *serve_extra,
        )
        self.start_machine(
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1", "-boot", "n"
        )
        self.wait_for_serial("STANDIN-READY", 150)
        return self.log("serve.log")

    def boots(self) -> list[dict[str, object]]:
        """serve's /v1/boots (each /ipxe request, with its time), asked from the namespace."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, "curl", "-sf", f"http://{SERVER}:8080/v1/boots"],
            capture_output=True,
            timeout=30,
            check=True,
        )
        boots: list[dict[str, object]] = json.loads(done.stdout)
        return boots

    def stage_waits(self) -> list[tuple[str, float]]:
        """For each fetch of an iPXE stage (a TFTP read, the /ipxe request), what it fetched and
        the seconds since serve's last DHCP answer before it (serve.log's times)."""
        answers, fetches = [], []
        for line in self.log("serve.log").splitlines():
            if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line):
                continue
            at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if re.search(r"provision\.serve\.dhcp dhcp \S+: (offer|ack) ", line):
                answers.append(at)
            elif found := re.search(r"provision\.serve\.tftp tftp \S+: read (\S+)", line):
                fetches.append((at, found[1]))
        fetches += [(float(str(b["at"])), "/ipxe") for b in self.boots()]
        return [
            (name, round(at - max(a for a in answers if a <= at), 3))
            for at, name in sorted(fetches)
            if any(a <= at for a in answers)
        ]

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def lab_network(tmp_path: Path, *, with_dhcp_server: bool) -> Iterator[LabNetwork]:
    """The namespaces (a fixture's body): the bridge at SERVER, and dnsmasq's at DHCP_SERVER."""
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces and a tap device)")
    name = f"pv-{secrets.token_hex(4)}"
    dhcp_name = f"{name}-d" if with_dhcp_server else None
    ip("netns", "add", name)
    if dhcp_name:
        ip("netns", "add", dhcp_name)
    lab = LabNetwork(name, tmp_path, dhcp_name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "link", "add", "br0", "type", "bridge")
        ip("-n", name, "tuntap", "add", "dev", "tap0", "mode", "tap")
        ip("-n", name, "link", "set", "tap0", "master", "br0")
        ip("-n", name, "addr", "add", f"{SERVER}/24", "dev", "br0")
        ip("-n", name, "link", "set", "tap0", "up")
        ip("-n", name, "link", "set", "br0", "up")
        ip("-n", name, "route", "add", "default", "dev", "br0")  # for DHCP's broadcast replies
        if dhcp_name:
            ip(
                "-n",
                name,
                "link",
                "add",
                "va",
                "type",
                "veth",
                "peer",
                "name",
                "vb",
                "netns",
                dhcp_name,
            )
            ip("-n", name, "link", "set", "va", "master", "br0")
            ip("-n", name, "link", "set", "va", "up")
            ip("-n", dhcp_name, "link", "set", "lo", "up")
            ip("-n", dhcp_name, "addr", "add", f"{DHCP_SERVER}/24", "dev", "vb")
            ip("-n", dhcp_name, "link", "set", "vb", "up")
        yield lab
    finally:
        lab.stop()
        for namespace in (name, dhcp_name):
            if namespace:
                subprocess.run(["ip", "netns", "del", namespace], check=False, timeout=30)


def write_lab(tmp: Path) -> Path:
    """The served root (the stand-in kernel and busybox initrd, which prints STANDIN-READY) and
    a lab file whose one machine boots it; returns the root."""
    root = tmp / "root"
    root.mkdir()
    write_standin(root, "netns")
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
    return root
