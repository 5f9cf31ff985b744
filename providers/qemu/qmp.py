"""A minimal QMP (QEMU Machine Protocol) client over the VM's unix socket."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError

# sockaddr_un.sun_path holds 108 bytes; longer paths are reached through /proc/self/fd.
_SUN_PATH_MAX = 107


class QMPError(ProvisionError):
    """QEMU's monitor could not be reached or refused a command."""


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    target = os.fspath(path)
    dir_fd = None
    if len(os.fsencode(target)) > _SUN_PATH_MAX:
        dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
        target = f"/proc/self/fd/{dir_fd}/{path.name}"
    try:
        sock.connect(target)
    except OSError as exc:
        sock.close()
        raise QMPError(f"cannot connect to QEMU monitor {path}: {exc.strerror or exc}") from exc
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return sock


class QMPClient:
    """Send QMP commands and read their replies (events in between are skipped)."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self._sock = _connect(path, timeout)
        self._buffer = b""
        greeting = self._read_message()
        if "QMP" not in greeting:
            raise QMPError(f"unexpected QMP greeting from {path}")
        self.execute("qmp_capabilities")

    def _read_message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise QMPError(f"QEMU monitor read failed: {exc}") from exc
            if not chunk:
                raise QMPError("QEMU monitor closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QMPError("QEMU monitor sent something that is not a JSON object")
        return message

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = self._read_message()
            if "return" in message:
                return message["return"]
            if "error" in message:
                error = message["error"]
                raise QMPError(f"QEMU refused {command}: {error.get('desc', error)}")
        raise QMPError(f"no answer from QEMU to {command}")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
