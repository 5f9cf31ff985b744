"""A read-only TFTP server (RFC 1350, with the blksize, tsize and timeout options of RFC 2347-2349
and the windowsize of RFC 7440, which UEFI firmware asks for)
for firmware that can only PXE-boot over TFTP: it hands out the iPXE binaries (BIOS
``undionly.kpxe``, UEFI ``ipxe.efi`` from Debian's ``ipxe`` package), which then chainload
``/boot.ipxe`` over HTTP.

Only files directly in the served directory are given (no ``/``, no ``..``, regular files only),
or, for ``provision serve --tftp``, only the named iPXE binaries of the package (Debian's
``ipxe.efi`` is a symlink to ``/boot/ipxe.efi``: the server resolves the package's own links
once at start, never a client's name); writes are refused. Each transfer runs on its own socket
and thread, retransmits a block (or a window, at most 64 blocks) up to five times, and gives up
after that: a client that vanishes costs one thread for seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("provision.serve.tftp")

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
NOT_FOUND, ACCESS, ILLEGAL, OPTION = 1, 2, 4, 8
IPXE_DIR = Path("/usr/lib/ipxe")
IPXE_FILES = ("undionly.kpxe", "ipxe.efi")  # the boot files DHCP hands out (dhcp.py)
RETRIES = 5


def parse_request(packet: bytes) -> tuple[int, str, str, dict[str, str]] | None:
    """(opcode, file name, mode, options) of a read or write request, or None."""
    if len(packet) < 4:
        return None
    opcode = struct.unpack("!H", packet[:2])[0]
    fields = packet[2:].split(b"\0")
    if fields and fields[-1] == b"":
        fields = fields[:-1]
    if opcode not in (RRQ, WRQ) or len(fields) < 2:
        return None
    try:
        text = [f.decode("ascii") for f in fields]
    except UnicodeDecodeError:
        return None
    options = {text[i].lower(): text[i + 1] for i in range(2, len(text) - 1, 2)}
    return opcode, text[0], text[1].lower(), options


def _error(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode() + b"\0"


def resolve_tftp(root: Path, name: str) -> Path | None:
    """A regular file directly inside ``root``; None for anything else."""
    name = name.lstrip("/")
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        return None
    path = root / name
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return path if stat.S_ISREG(st.st_mode) else None


def ipxe_files(directory: Path = IPXE_DIR) -> dict[str, Path]:
    """The iPXE binaries of the package that are there, by name, the package's links resolved."""
    found = {}
    for name in IPXE_FILES:
        path = (directory / name).resolve()
        if path.is_file():
            found[name] = path
    return found


class TftpServer:
    """Serves the regular files directly in ``root``, or exactly the files of a name -> path
    table (``ipxe_files()``)."""

    def __init__(
        self, root: Path | Mapping[str, Path], host: str = "127.0.0.1", port: int = 69
    ) -> None:
        self.root = root
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.address = self.sock.getsockname()
        self._stop = threading.Event()

    def serve_forever(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                packet, client = self.sock.recvfrom(1500)
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._transfer, args=(packet, client), daemon=True).start()

    def shutdown(self) -> None:
        self._stop.set()
        self.sock.close()

    def _transfer(self, packet: bytes, client: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.address[0], 0))
            request = parse_request(packet)
            if request is None:
                sock.sendto(_error(ILLEGAL, "not a TFTP request"), client)
                return
            opcode, name, mode, options = request
            if opcode == WRQ:
                sock.sendto(_error(ACCESS, "read-only server"), client)
                return
            if isinstance(self.root, Path):
                path = resolve_tftp(self.root, name)
            else:
                path = self.root.get(name.lstrip("/"))
            if path is None or mode not in ("octet", "netascii"):
                sock.sendto(_error(NOT_FOUND, "file not found"), client)
                log.info("tftp %s: %s refused", client[0], name)
                return
            log.info(
                "tftp %s: read %s (options %s)",
                client[0],
                name,
                " ".join(f"{k}={v}" for k, v in options.items()) or "none",
            )
            self._send(sock, client, path, options)

    def _send(
        self, sock: socket.socket, client: tuple[str, int], path: Path, options: dict[str, str]
    ) -> None:
        size = path.stat().st_size
        blksize = 512
        timeout = 1.0
        accepted: dict[str, str] = {}
        if "blksize" in options and options["blksize"].isdigit():
            blksize = min(max(int(options["blksize"]), 8), 65464)
            accepted["blksize"] = str(blksize)
        if "tsize" in options:
            accepted["tsize"] = str(size)
        if (
            "timeout" in options
            and options["timeout"].isdigit()
            and 1 <= int(options["timeout"]) <= 255
        ):
            timeout = float(options["timeout"])
            accepted["timeout"] = options["timeout"]
        window = 1
        if "windowsize" in options and options["windowsize"].isdigit():
            window = min(max(int(options["windowsize"]), 1), 64)
            accepted["windowsize"] = str(window)
        with open(path, "rb") as handle:
            if accepted:
                oack = struct.pack("!H", OACK) + b"".join(
                    k.encode() + b"\0" + v.encode() + b"\0" for k, v in accepted.items()
                )
                sock.settimeout(timeout)
                if not self._exchange(sock, client, oack, 0):
                    return
            if self._send_blocks(sock, client, handle, size, blksize, window, timeout):
                log.info(
                    "tftp %s: sent %s (%d bytes, blksize %d, window %d)",
                    client[0],
                    path.name,
                    size,
                    blksize,
                    window,
                )
            else:
                log.info("tftp %s: %s abandoned", client[0], path.name)

    def _send_blocks(
        self,
        sock: socket.socket,
        client: tuple[str, int],
        handle: BinaryIO,
        size: int,
        blksize: int,
        window: int,
        timeout: float,
    ) -> bool:
        """Blocks 1..N (the last one short, maybe empty), ``window`` at a time (RFC 7440; 1 is
        RFC 1350's lock-step); after an ACK the next window starts after the block it names,
        after a timeout the window is sent again, RETRIES times at most."""
        last_block = size // blksize + 1
        first, tries = 1, 0
        while first <= last_block:
            end = min(first + window - 1, last_block)
            for block in range(first, end + 1):
                handle.seek((block - 1) * blksize)
                sock.sendto(struct.pack("!HH", DATA, block & 0xFFFF) + handle.read(blksize), client)
            acked = self._wait_ack(sock, client, range(first - 1, end + 1), timeout)
            if acked is None:
                return False
            if acked < first:
                tries += 1
                if tries >= RETRIES:
                    return False
                continue
            first, tries = acked + 1, 0
        return True

    def _wait_ack(
        self, sock: socket.socket, client: tuple[str, int], blocks: range, timeout: float
    ) -> int | None:
        """The highest block of ``blocks`` the client acknowledges before the timeout (the first
        of ``blocks``, one before the window, when none is); None on an ERROR."""
        numbers = {block & 0xFFFF: block for block in blocks}  # block numbers wrap at 65536
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                reply, source = sock.recvfrom(1500)
            except TimeoutError:
                break
            if source != client or len(reply) < 4:
                continue
            opcode, number = struct.unpack("!HH", reply[:4])
            if opcode == ERROR:
                return None
            if opcode == ACK and number in numbers and numbers[number] > blocks[0]:
                return numbers[number]
        return blocks[0]

    def _exchange(
        self, sock: socket.socket, client: tuple[str, int], packet: bytes, expect: int
    ) -> bool:
        """Send ``packet`` until the client acknowledges block ``expect``."""
        for _attempt in range(RETRIES):
            sock.sendto(packet, client)
            try:
                while True:
                    reply, source = sock.recvfrom(1500)
                    if source != client or len(reply) < 4:
                        continue
                    opcode, number = struct.unpack("!HH", reply[:4])
                    if opcode == ERROR:
                        return False
                    if opcode == ACK and number == expect:
                        return True
            except TimeoutError:
                continue
        return False
