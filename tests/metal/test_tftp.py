"""The read-only TFTP server against curl's TFTP client (an independent implementation)."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.providers.metal.tftp import IPXE_DIR, TftpServer, ipxe_files


@pytest.fixture
def tftp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    root = tmp_path / "tftp"
    root.mkdir()
    for name in ("undionly.kpxe", "ipxe.efi"):
        if not (IPXE_DIR / name).is_file():
            pytest.fail(f"needs Debian's ipxe package ({IPXE_DIR / name})")
        (root / name).write_bytes((IPXE_DIR / name).read_bytes())
    (root / "odd.bin").write_bytes(
        os.urandom(512 * 3)
    )  # a multiple of the block size: an empty last block
    (tmp_path / "secret").write_text("outside")
    os.symlink(tmp_path / "secret", root / "link")
    server = TftpServer(root, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.address[1], root
    finally:
        server.shutdown()


def curl(port: int, name: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *extra, f"tftp://127.0.0.1:{port}/{name}"],
        capture_output=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("name", ["undionly.kpxe", "ipxe.efi", "odd.bin"])
@pytest.mark.parametrize("blksize", [None, "1468"])
def test_files_arrive_whole(tftp: tuple[int, Path], name: str, blksize: str | None) -> None:
    port, root = tftp
    done = curl(port, name, *(["--tftp-blksize", blksize] if blksize else []))
    assert done.returncode == 0, done.stderr
    assert (
        hashlib.sha256(done.stdout).digest() == hashlib.sha256((root / name).read_bytes()).digest()
    )


@pytest.mark.parametrize("name", ["missing.efi", "link", "..%2Fsecret"])
def test_only_regular_files_of_the_directory_are_served(tftp: tuple[int, Path], name: str) -> None:
    port, _ = tftp
    done = curl(port, name)
    assert done.returncode != 0 and done.stdout == b""


def test_writes_and_traversal_are_refused_on_the_wire(tftp: tuple[int, Path]) -> None:
    port, _ = tftp
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for packet in (
            struct.pack("!H", 2) + b"new.bin\0octet\0",
            struct.pack("!H", 1) + b"../secret\0octet\0",
            struct.pack("!H", 1) + b"/etc/passwd\0octet\0",
        ):
            sock.sendto(packet, ("127.0.0.1", port))
            reply, _ = sock.recvfrom(1500)
            assert struct.unpack("!H", reply[:2])[0] == 5  # ERROR


def test_the_package_binaries_are_served_by_name_through_its_own_links(tmp_path: Path) -> None:
    """Debian's ipxe.efi is a symlink to /boot/ipxe.efi: serve --tftp resolves the package's
    links once, and a client can name only the binaries of the table."""
    assert (IPXE_DIR / "ipxe.efi").is_symlink()  # why the directory rule cannot serve it
    files = ipxe_files()
    assert set(files) == {"undionly.kpxe", "ipxe.efi"}
    server = TftpServer(files, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.address[1]
        for name in ("ipxe.efi", "undionly.kpxe"):
            done = curl(port, name, "--tftp-blksize", "1468")
            assert done.returncode == 0, done.stderr
            assert done.stdout == files[name].read_bytes()
        # in the directory, not in the table
        for name in ("ipxe.lkrn", "..%2Fipxe%2Fipxe.efi", "snponly.efi"):
            assert curl(port, name).stdout == b""
    finally:
        server.shutdown()


def oack_options(packet: bytes) -> dict[str, str]:
    assert struct.unpack("!H", packet[:2])[0] == 6, packet  # OACK
    fields = packet[2:].split(b"\0")[:-1]
    return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}


def test_windowsize_sends_windows_and_resends_after_the_block_acknowledged(
    tftp: tuple[int, Path],
) -> None:
    """RFC 7440, which OVMF asks for (windowsize=4): a window of blocks per ACK; an ACK of a
    block inside the window (the client lost the next one) restarts the window after it."""
    port, root = tftp
    expected = (root / "undionly.kpxe").read_bytes()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        request = b"undionly.kpxe\0octet\0blksize\x001024\0windowsize\x004\0tsize\x000\0"
        sock.sendto(struct.pack("!H", 1) + request, ("127.0.0.1", port))
        packet, server = sock.recvfrom(2000)
        assert oack_options(packet) == {
            "blksize": "1024",
            "windowsize": "4",
            "tsize": str(len(expected)),
        }

        def window(ack: int) -> list[tuple[int, bytes]]:
            sock.sendto(struct.pack("!HH", 4, ack), server)
            blocks = []
            for _ in range(4):
                data, _ = sock.recvfrom(2000)
                assert struct.unpack("!H", data[:2])[0] == 3
                blocks.append((struct.unpack("!H", data[2:4])[0], data[4:]))
                if len(data) - 4 < 1024:
                    break
            return blocks

        first = window(0)
        assert [n for n, _ in first] == [1, 2, 3, 4]
        sock.settimeout(0.3)  # the server waits for an ACK after a window
        with pytest.raises(TimeoutError):
            sock.recvfrom(2000)
        sock.settimeout(5)
        again = window(2)  # as if block 3 was lost
        assert [n for n, _ in again] == [3, 4, 5, 6] and again[:2] == first[2:]
        received = dict(first + again)
        last = 6
        while len(received[last]) == 1024:
            more = window(last)
            received.update(more)
            last = more[-1][0]
        sock.sendto(struct.pack("!HH", 4, last), server)
        assert b"".join(received[n] for n in range(1, last + 1)) == expected


def test_a_window_is_at_most_64_blocks(tftp: tuple[int, Path]) -> None:
    port, _ = tftp
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(
            struct.pack("!H", 1) + b"ipxe.efi\0octet\0windowsize\x0065535\0", ("127.0.0.1", port)
        )
        packet, server = sock.recvfrom(2000)
        assert oack_options(packet) == {"windowsize": "64"}
        sock.sendto(struct.pack("!HH", 5, 0) + b"done\0", server)  # ERROR: the client gives up
