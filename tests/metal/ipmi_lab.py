"""An IPMI BMC (pyghmi's server side, the real IPMI 2.0 / RMCP+ protocol) that powers one lab
machine: a disk-less QEMU VM that network-boots. Run as a process by the tests:
``python ipmi_lab.py --port P --mac M --boot-url URL --dir D --password-file F``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyghmi.ipmi.bmc as bmc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metal_testkit import VirtualMachine  # noqa: E402


class MachineBmc(bmc.Bmc):  # type: ignore[misc]
    def __init__(self, machine: VirtualMachine, password: str, port: int) -> None:
        super().__init__({"admin": password}, port=port, address="127.0.0.1")
        self.machine = machine
        self.boot_device = "default"

    def get_power_state(self) -> str:
        return "on" if self.machine.on() else "off"

    def power_on(self) -> None:
        self.machine.power_on()

    def power_off(self) -> None:
        self.machine.power_off()

    def power_reset(self) -> None:
        self.machine.reset()

    def power_shutdown(self) -> None:
        self.machine.press_power_button()

    def get_boot_device(self) -> str:
        return self.boot_device

    def set_boot_device(self, device: str) -> None:
        self.boot_device = device
        print(f"boot device {device}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mac", required=True)
    parser.add_argument("--boot-url", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--password-file", required=True)
    args = parser.parse_args()
    machine = VirtualMachine("ipmi-node", args.mac, Path(args.dir), args.boot_url, mem_mib=256)
    server = MachineBmc(machine, Path(args.password_file).read_text().strip(), args.port)
    print("BMC-READY", flush=True)
    try:
        server.listen()
    finally:
        machine.power_off()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
