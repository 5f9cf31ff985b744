"""proxyDHCP and lab DHCP on the wire: DHCP packets sent over UDP on 127.0.0.1 as PXE firmware
and iPXE send them, the replies parsed back (independently of the server's own builder)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.providers.metal.dhcp import DhcpServer, DhcpSettings

KNOWN = "52:54:00:00:00:01"


def discover(
    mac: str,
    *,
    arch: int | None = 0,
    ipxe: bool = False,
    pxe: bool = True,
    kind: int = 1,
    requested: str | None = None,
    user_class: bytes | None = None,
) -> bytes:
    head = struct.pack("!BBBBIHH", 1, 1, 6, 0, 0x1234ABCD, 0, 0x8000) + bytes(16)
    chaddr = bytes.fromhex(mac.replace(":", "")) + bytes(10)
    body = head + chaddr + bytes(192) + b"\x63\x82\x53\x63" + bytes([53, 1, kind])
    if pxe:
        body += bytes([60, 32]) + b"PXEClient:Arch:00000:UNDI:002001"
    if arch is not None:
        body += bytes([93, 2]) + struct.pack("!H", arch)
    if ipxe:
        user_class = b"iPXE"
    if user_class:
        body += bytes([77, len(user_class)]) + user_class
    if requested:
        body += bytes([50, 4]) + socket.inet_aton(requested)
    body += bytes([97, 17, 0]) + bytes(range(16))
    return body + b"\xff"


def read_reply(data: bytes) -> dict[str, Any]:
    assert data[236:240] == b"\x63\x82\x53\x63"
    options: dict[int, bytes] = {}
    i = 240
    while data[i] != 255:
        options[data[i]] = data[i + 2 : i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return {
        "type": options[53][0],
        "xid": struct.unpack("!I", data[4:8])[0],
        "yiaddr": socket.inet_ntoa(data[16:20]),
        "siaddr": socket.inet_ntoa(data[20:24]),
        "file": data[108:236].rstrip(b"\0").decode(),
        "options": options,
    }


class Exchange:
    """Sends one packet to the server and reads its reply (None when it stays silent)."""

    def __init__(self, client: socket.socket, server: DhcpServer, settings: DhcpSettings) -> None:
        self.client, self.server, self.settings = client, server, settings

    def __call__(self, packet: bytes) -> dict[str, Any] | None:
        self.client.sendto(packet, self.server.address)
        try:
            return read_reply(self.client.recvfrom(4096)[0])
        except TimeoutError:
            return None


@pytest.fixture
def exchange(request: pytest.FixtureRequest) -> Iterator[Exchange]:
    mode = getattr(request, "param", "proxy")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(1.0)
    settings = DhcpSettings(
        server_ip="10.0.2.2",
        http_url="http://10.0.2.2:8080",
        mode=mode,
        pool=("192.168.50.10", "192.168.50.11") if mode == "full" else None,
        router="192.168.50.1",
        dns=("192.168.50.1",),
        known=lambda mac: mac == KNOWN,
    )
    server = DhcpServer(settings, host="127.0.0.1", port=0, reply_to=client.getsockname())
    threading.Thread(target=server.serve_forever, daemon=True).start()

    try:
        yield Exchange(client, server, settings)
    finally:
        server.shutdown()
        client.close()


def test_proxy_offers_where_to_boot_and_no_address(exchange: Exchange) -> None:
    bios = exchange(discover(KNOWN, arch=0))
    assert bios is not None and bios["type"] == 2 and bios["xid"] == 0x1234ABCD
    assert (
        bios["yiaddr"] == "0.0.0.0"
        and bios["siaddr"] == "10.0.2.2"
        and bios["file"] == "undionly.kpxe"
    )
    options = bios["options"]
    assert options[60] == b"PXEClient" and options[54] == socket.inet_aton("10.0.2.2")
    assert options[97] == bytes([0]) + bytes(range(16))
    assert options[43] == bytes([6, 1, 8, 255])
    efi = exchange(discover(KNOWN, arch=7))
    assert efi is not None and efi["file"] == "ipxe.efi"
    chained = exchange(discover(KNOWN, arch=7, ipxe=True))
    assert chained is not None and chained["file"] == "http://10.0.2.2:8080/boot.ipxe"
    ack = exchange(discover(KNOWN, arch=0, kind=3))
    assert ack is not None and ack["type"] == 5 and ack["file"] == "undionly.kpxe"


def test_proxy_answers_only_pxe_clients_of_the_inventory(exchange: Exchange) -> None:
    assert exchange(discover("52:54:00:99:99:99")) is None
    assert exchange(discover(KNOWN, pxe=False, arch=None)) is None
    assert exchange(b"garbage" * 50) is None
    exchange.settings.answer_unknown = True
    assert exchange(discover("52:54:00:99:99:99")) is not None


@pytest.mark.parametrize("exchange", ["full"], indirect=True)
def test_full_dhcp_leases_the_same_address_to_the_same_machine(exchange: Exchange) -> None:
    offer = exchange(discover(KNOWN))
    assert (
        offer is not None
        and offer["yiaddr"] == "192.168.50.10"
        and offer["file"] == "undionly.kpxe"
    )
    options = offer["options"]
    assert options[1] == socket.inet_aton("255.255.255.0") and options[3] == socket.inet_aton(
        "192.168.50.1"
    )
    ack = exchange(discover(KNOWN, kind=3, requested="192.168.50.10"))
    assert ack is not None and ack["type"] == 5 and ack["yiaddr"] == "192.168.50.10"
    nak = exchange(discover(KNOWN, kind=3, requested="192.168.50.99"))
    assert nak is not None and nak["type"] == 6
    again = exchange(discover(KNOWN))
    assert again is not None and again["yiaddr"] == "192.168.50.10"


def test_the_boot_file_follows_the_architecture_option(exchange: Exchange) -> None:
    for arch, expected in ((0, "undionly.kpxe"), (7, "ipxe.efi"), (9, "ipxe.efi")):
        reply = exchange(discover(KNOWN, arch=arch))
        assert reply is not None and reply["file"] == expected, arch
        assert reply["options"][77] == b"provision"  # what the iPXE it loads asks with
    # no iPXE binary for 32-bit x86 UEFI, ARM UEFI or UEFI HTTP boot: proxyDHCP stays silent
    for arch in (6, 10, 11, 16):
        assert exchange(discover(KNOWN, arch=arch)) is None, arch
    assert exchange(discover(KNOWN, arch=11, ipxe=True)) is not None  # iPXE on ARM takes HTTP


@pytest.mark.parametrize("exchange", ["full"], indirect=True)
def test_full_dhcp_gives_an_address_without_a_boot_file_to_other_architectures(
    exchange: Exchange,
) -> None:
    reply = exchange(discover(KNOWN, arch=11))
    assert reply is not None and reply["yiaddr"] == "192.168.50.10"
    assert reply["file"] == "" and reply["siaddr"] == "0.0.0.0" and 43 not in reply["options"]


def test_ipxe_is_told_the_http_script_and_loops_end_there(exchange: Exchange) -> None:
    http = "http://10.0.2.2:8080/boot.ipxe"
    for packet in (
        discover(KNOWN, arch=0, ipxe=True),  # a NIC ROM's iPXE, or undionly.kpxe
        discover(KNOWN, arch=7, user_class=b"\x04iPXE"),  # RFC 3004's length-prefixed form
        discover(KNOWN, arch=0, user_class=b"provision"),  # the iPXE this server handed out
    ):
        reply = exchange(packet)
        assert reply is not None and reply["file"] == http and 77 not in reply["options"]


def test_chain_ipxe_hands_bios_ipxe_firmware_undionly_once(exchange: Exchange) -> None:
    exchange.settings.chain_ipxe = True
    firmware = exchange(discover(KNOWN, arch=0, ipxe=True))
    assert firmware is not None and firmware["file"] == "undionly.kpxe"
    assert firmware["options"][77] == b"provision"
    ack = exchange(discover(KNOWN, arch=0, ipxe=True, kind=3))
    assert ack is not None and ack["file"] == "undionly.kpxe"  # the offer and the ack agree
    chained = exchange(discover(KNOWN, arch=0, user_class=b"provision"))
    assert chained is not None and chained["file"] == "http://10.0.2.2:8080/boot.ipxe"
    # EFI iPXE of this build keeps no cached DHCP packets: chained, it would loop
    efi = exchange(discover(KNOWN, arch=7, ipxe=True))
    assert efi is not None and efi["file"] == "http://10.0.2.2:8080/boot.ipxe"
    legacy = exchange(discover(KNOWN, arch=0))
    assert legacy is not None and legacy["file"] == "undionly.kpxe"


@pytest.mark.parametrize(
    "missing", [["--tftp", "127.0.0.1:0"], ["--dhcp", "proxy", "--boot-server", "127.0.0.1"]]
)
def test_chain_ipxe_without_dhcp_or_tftp_is_refused(tmp_path: Path, missing: list[str]) -> None:
    (tmp_path / "lab.yml").write_text(f'machines:\n  - {{name: node-1, macs: ["{KNOWN}"]}}\n')
    argv = [sys.executable, "-m", "provision", "serve", "--lab", str(tmp_path / "lab.yml")]
    argv += ["--root", str(tmp_path), "--listen", "127.0.0.1:0", "--dhcp-chain-ipxe", *missing]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=os.environ)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "provision: error: --dhcp-chain-ipxe needs --dhcp and --tftp: the binary comes from here"
    ]
