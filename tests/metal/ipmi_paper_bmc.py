"""An IPMI BMC (pyghmi's server side, the real IPMI 2.0 / RMCP+ protocol) of a machine without
QEMU: a power state, and every chassis control it receives printed as a line. Run by the tests:
``python ipmi_paper_bmc.py --port P --password-file F [--button honoured|ignored|absent]``
(the operating system shuts down on the ACPI power button, ignores it, or the BMC refuses soft)."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import pyghmi.ipmi.bmc as bmc


class PaperBmc(bmc.Bmc):  # type: ignore[misc]
    def __init__(self, password: str, port: int, button: str) -> None:
        super().__init__({"admin": password}, port=port, address="127.0.0.1")
        self.powered = True
        self.button = button

    def get_power_state(self) -> str:
        return "on" if self.powered else "off"

    def _off(self) -> None:
        self.powered = False

    def power_on(self) -> None:
        print("on", flush=True)
        self.powered = True

    def power_off(self) -> None:
        print("off", flush=True)
        self._off()

    def power_shutdown(self) -> None:
        if self.button == "absent":
            raise NotImplementedError  # pyghmi answers 0xcc: the soft shutdown is refused
        print("soft", flush=True)
        if self.button == "honoured":
            threading.Timer(0.5, self._off).start()  # the OS shuts down, then powers off


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--button", choices=["honoured", "ignored", "absent"], required=True)
    args = parser.parse_args()
    server = PaperBmc(Path(args.password_file).read_text().strip(), args.port, args.button)
    print("BMC-READY", flush=True)
    server.listen()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
