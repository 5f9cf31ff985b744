"""Drive a QEMU guest (TCG) for the boot tests: the serial console is a pipe read by a
thread; commands go to the getty root shell on ttyS0; QMP sends the ACPI power button."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_cidata(dest: Path, user_data: str, hostname: str) -> Path:
    tree = dest.with_suffix(".d")
    tree.mkdir(parents=True)
    (tree / "user-data").write_text(user_data)
    (tree / "meta-data").write_text(f"instance-id: test\nlocal-hostname: {hostname}\n")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r",
                    "-o", str(dest), str(tree)], check=True)  # fmt: skip
    return dest


class Machine:
    """One VM. ``console`` is everything the serial port printed so far."""

    def __init__(self, kernel: Path | None, initrd: Path | None, workdir: Path, *, mem: int = 512,
                 publish: Sequence[tuple[int, int]] = (), cidata: Path | None = None,
                 cmdline: str = "console=tty0 console=ttyS0 panic=-1 quiet",
                 user_net: str = "", extra: Sequence[str] = (), disk: Path | None = None,
                 machine: str = "q35") -> None:  # fmt: skip
        """Boots ``kernel`` + ``initrd`` directly, or, given ``disk``, that raw disk through the
        BIOS (a copy-on-write snapshot: the file is not changed). ``machine`` is q35, as
        `provision run qemu` boots (the CIDATA CD on virtio-scsi), or pc (the CD on IDE)."""
        self.workdir = workdir
        self.qmp_path = workdir / "qmp.sock"
        self.started = time.monotonic()
        if disk is not None:
            boot = ["-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
        else:
            assert kernel is not None and initrd is not None
            boot = ["-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]
        argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-machine", machine, "-m", str(mem), "-smp", "1",
            *boot, "-nodefaults", "-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-device", "virtio-rng-pci", *extra,
        ]  # fmt: skip
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in publish)
        argv += [
            "-netdev",
            f"user,id=n0,restrict=on{fwd}{user_net}",
            "-device",
            "virtio-net-pci,netdev=n0",
        ]
        if cidata is not None:
            argv += [
                "-drive",
                f"file={cidata},format=raw,if=none,id=cidata,media=cdrom,readonly=on",
            ]
            if machine == "pc":
                argv += ["-device", "ide-cd,drive=cidata"]
            else:
                argv += ["-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-cd,drive=cidata,bus=scsi0.0"]  # fmt: skip
        self._log = open(workdir / "console.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        self._buffer = bytearray()
        self._consumed = 0
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):  # type: ignore[attr-defined]
            self._log.write(chunk)
            self._log.flush()
            with self._lock:
                self._buffer += chunk
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    @property
    def console(self) -> str:
        with self._lock:
            return self._buffer.decode("utf-8", "replace").replace("\r", "")

    def wait_for(self, pattern: str, timeout: float = 60.0, start: int = 0) -> re.Match[str]:
        """Wait until regex ``pattern`` appears in the console after offset ``start``."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.S)
        with self._lock:
            while True:
                text = self._buffer.decode("utf-8", "replace").replace("\r", "")
                match = regex.search(text, start)
                if match:
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = text[-3000:]
                    raise AssertionError(f"{pattern!r} not on the console; last output:\n{tail}")
                self._lock.wait(min(left, 0.5))

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def shell(self, command: str, timeout: float = 30.0) -> str:
        """Run ``command`` in the console's root shell; return its output."""
        # busybox ash asks the terminal where the cursor is (ESC[6n) after each prompt:
        # answer as a terminal would, or it takes what we type next for the answer
        prompt = self.wait_for(r"# \x1b\[6n", timeout, self._consumed)
        tag = uuid.uuid4().hex[:8]
        # the terminal echoes what we type; the quotes keep the echo from matching
        self.send(f"\x1b[1;1Recho '{tag}''B'; {command}; echo '{tag}''E'$?\n")
        match = self.wait_for(rf"{tag}B\n(.*?){tag}E(\d+)", timeout, prompt.end())
        self._consumed = match.end()
        assert match.group(2) == "0", f"{command!r} failed ({match.group(2)}): {match.group(1)}"
        return match.group(1)

    def qmp(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.qmp_path))
            reader = sock.makefile("rb")
            reader.readline()
            for cmd in ("qmp_capabilities", command):
                sock.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
                while b'"return"' not in (line := reader.readline()):
                    assert b'"error"' not in line, line
                    assert line, "QMP closed"

    def wait_exit(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)  # the reader writes the log until QEMU's output ends
        self._log.close()
