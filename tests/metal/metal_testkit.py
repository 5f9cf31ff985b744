"""A virtual bare-metal lab: QEMU machines with no disk that network-boot (iPXE, QEMU's user
network with a ``bootfile`` URL on ``provision serve``), powered through a small Redfish
service that speaks the real protocol (GET the system, PATCH its Boot override, POST
ComputerSystem.Reset) over real QEMU processes: On starts QEMU, ForceOff quits it through QMP,
ForceRestart resets it, GracefulShutdown presses the power button; a machine that powers itself
off (its QEMU exits) reads Off. A machine may have a local disk (a raw file, /dev/vda). The agent's port 7080 of each
machine is forwarded to a port of 127.0.0.1, which the lab file records as the machine's."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

USER, PASSWORD = "admin", "BMC-PASSWORD-MARKER-91c3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class VirtualMachine:
    """One lab machine: a MAC, a forwarded agent port, and a QEMU process while powered on."""

    name: str
    mac: str
    directory: Path
    boot_url: str
    agent_port: int = field(default_factory=free_port)
    mem_mib: int = 512
    disk: Path | None = None  # a raw file: the local disk (/dev/vda), after the NIC in boot order
    forwards: dict[int, int] = field(default_factory=dict)  # more guest port -> 127.0.0.1 port
    process: subprocess.Popen[bytes] | None = None
    boot_override: dict[str, str] = field(
        default_factory=lambda: {
            "BootSourceOverrideTarget": "None",
            "BootSourceOverrideEnabled": "Disabled",
        }
    )
    power_ons: int = 0

    @property
    def qmp(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def serial(self) -> Path:
        return self.directory / "serial.log"

    def on(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def power_on(self) -> None:
        if self.on():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.qmp.unlink(missing_ok=True)
        netdev = (
            f"user,id=n0,bootfile={self.boot_url},hostfwd=tcp:127.0.0.1:{self.agent_port}-:7080"
        )
        for guest, port in self.forwards.items():
            netdev += f",hostfwd=tcp:127.0.0.1:{port}-:{guest}"
        argv = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            str(self.mem_mib),
            "-smp",
            "1",
            "-display",
            "none",
            "-no-user-config",
            "-nodefaults",
            "-serial",
            f"file:{self.serial}",
            "-qmp",
            f"unix:{self.qmp},server=on,wait=off",
            "-netdev",
            netdev,
            "-device",
            f"virtio-net-pci,netdev=n0,mac={self.mac},bootindex=1",
            "-boot",
            "n",
        ]
        if self.disk is not None:
            argv += [
                "-drive",
                f"file={self.disk},format=raw,if=none,id=d0,cache=unsafe",
                "-device",
                "virtio-blk-pci,drive=d0,bootindex=2",
            ]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / "qemu.err", "ab"),  # noqa: SIM115
        )
        self.power_ons += 1

    def _qmp(self, command: str) -> None:
        deadline = time.monotonic() + 5
        while not self.qmp.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.qmp))
            reader = sock.makefile("rb")
            reader.readline()  # greeting
            for message in ({"execute": "qmp_capabilities"}, {"execute": command}):
                sock.sendall(json.dumps(message).encode() + b"\n")
                while True:
                    line = json.loads(reader.readline() or b"{}")
                    if "return" in line or "error" in line or not line:
                        break

    def power_off(self) -> None:
        if not self.on():
            return
        with contextlib.suppress(OSError):
            self._qmp("quit")
        assert self.process is not None
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def reset(self) -> None:
        if self.on():
            self._qmp("system_reset")
        else:
            self.power_on()

    def press_power_button(self) -> None:
        if self.on():
            self._qmp("system_powerdown")


class RedfishLab:
    """The Redfish service of every machine of the lab: ``/redfish/v1/Systems/NAME``."""

    def __init__(self, machines: list[VirtualMachine]) -> None:
        self.machines = {m.name: m for m in machines}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Authorization header seen)
        self.resets: list[tuple[str, str]] = []  # (machine, ResetType) of every accepted reset
        self.lock = threading.Lock()
        lab = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _reply(self, code: int, body: Any = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _system(self) -> tuple[VirtualMachine | None, str]:
                auth = self.headers.get("Authorization", "")
                with lab.lock:
                    lab.requests.append((self.command, self.path, auth))
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if auth != expected:
                    self._reply(401, {"error": "unauthorized"})
                    return None, ""
                parts = self.path.strip("/").split("/")
                if (
                    len(parts) >= 4
                    and parts[:3] == ["redfish", "v1", "Systems"]
                    and parts[3] in lab.machines
                ):
                    return lab.machines[parts[3]], "/".join(parts[4:])
                self._reply(404, {"error": "no such system"})
                return None, ""

            def _body(self) -> Any:
                return json.loads(
                    self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}"
                )

            def do_GET(self) -> None:  # noqa: N802
                machine, rest = self._system()
                if machine is None:
                    return
                self._reply(
                    200,
                    {
                        "Id": machine.name,
                        "PowerState": "On" if machine.on() else "Off",
                        "Boot": {
                            **machine.boot_override,
                            "BootSourceOverrideTarget@Redfish.AllowableValues": [
                                "None",
                                "Pxe",
                                "Hdd",
                            ],
                        },
                        "Actions": {
                            "#ComputerSystem.Reset": {
                                "target": f"/redfish/v1/Systems/{machine.name}/Actions/ComputerSystem.Reset",
                                "ResetType@Redfish.AllowableValues": [
                                    "On",
                                    "ForceOff",
                                    "ForceRestart",
                                    "GracefulShutdown",
                                ],
                            }
                        },
                    },
                )

            def do_PATCH(self) -> None:  # noqa: N802
                machine, _ = self._system()
                if machine is None:
                    return
                boot = self._body().get("Boot", {})
                machine.boot_override.update({k: str(v) for k, v in boot.items()})
                self._reply(204)

            def do_POST(self) -> None:  # noqa: N802
                machine, rest = self._system()
                if machine is None:
                    return
                if rest != "Actions/ComputerSystem.Reset":
                    self._reply(404, {"error": "no such action"})
                    return
                kind = self._body().get("ResetType")
                actions = {
                    "On": machine.power_on,
                    "ForceOff": machine.power_off,
                    "ForceRestart": machine.reset,
                    "GracefulShutdown": machine.press_power_button,
                }
                if kind not in actions:
                    self._reply(400, {"error": f"ResetType {kind!r} is not allowed"})
                    return
                lab.resets.append((machine.name, kind))
                actions[kind]()
                self._reply(204)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def system_url(self, name: str) -> str:
        return f"{self.url}/redfish/v1/Systems/{name}"

    def close(self) -> None:
        for machine in self.machines.values():
            machine.power_off()
        self.server.shutdown()
        self.server.server_close()


def lab_file_text(
    machines: list[VirtualMachine], redfish: RedfishLab, password_file: Path, extra: str = ""
) -> str:
    """The lab file of ``machines`` (each with its disk, if it has one), then ``extra``."""
    lines = ["machines:"]
    for m in machines:
        lines += [
            f"  - name: {m.name}",
            f'    macs: ["{m.mac}"]',
            "    labels: {rack: a}",
            "    address: 127.0.0.1",
            f"    ports: {{7080: {m.agent_port}}}",
            *(["    disk: /dev/vda"] if m.disk is not None else []),
            f'    bmc: {{driver: redfish, address: "{redfish.system_url(m.name)}", username: {USER}, '
            f"passwordFile: {password_file}}}",
        ]
    return "\n".join(lines) + "\n" + extra
