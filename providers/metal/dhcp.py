"""DHCP for network boot: proxyDHCP beside a DHCP server provision does not control, or, in a
lab, a full DHCP server on one interface.

* **proxy** (RFC 4578 / the PXE spec): a PXE client's DISCOVER is answered with an OFFER that
  carries no address, only where to boot from (``siaddr`` and the boot file name, with PXE
  option 43 telling the client to boot that file at once); the DHCP server of the network
  hands out the address. A REQUEST to port 4011 gets the same answer as an ACK.
* **full**: addresses from a range (leases kept by MAC, the same address every time), with the
  subnet mask, router and DNS servers given, and the same boot answer.

The boot file depends on the client (option 93, its architecture, and option 77, its user
class): legacy BIOS PXE (architecture 0) gets ``undionly.kpxe`` over TFTP, UEFI x64
(architectures 7 and 9) ``ipxe.efi``, and iPXE itself (user class ``iPXE``, or option 175) the
HTTP URL of ``/boot.ipxe``, which chains to the machine's own script; that is what breaks the
loop (the iPXE a PXE ROM loaded asks again, now as iPXE). A client of another architecture
(32-bit or ARM UEFI, UEFI HTTP boot) gets no boot file: there is no iPXE binary for it.

With ``chain_ipxe`` a BIOS machine whose own firmware is iPXE (a NIC ROM, often old) is handed
this server's ``undionly.kpxe`` first. Each answer that hands out a binary carries the user
class ``provision``; the ``undionly.kpxe`` that firmware loaded takes its settings from the PXE
stack's cached DHCP packets and so asks with that user class, which gets the HTTP URL. (EFI
iPXE of this build keeps no cached packets, so it would loop: EFI iPXE firmware is never
chained.) Only machines of the inventory are answered unless ``answer_unknown`` is set.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("provision.serve.dhcp")

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_LEASE, OPT_TYPE, OPT_SERVER = 1, 3, 6, 51, 53, 54
OPT_REQUESTED, OPT_VENDOR_CLASS, OPT_USER_CLASS, OPT_ARCH, OPT_UUID, OPT_PXE = (
    50,
    60,
    77,
    93,
    97,
    43,
)
BIOS_FILE, EFI_FILE = "undionly.kpxe", "ipxe.efi"
BIOS_ARCHES, EFI_X64_ARCHES = (0,), (7, 9)  # RFC 4578 / IANA processor architecture types
CHAINED_CLASS = b"provision"  # the user class of the iPXE binaries this server handed out


@dataclass(frozen=True)
class Packet:
    op: int
    xid: int
    flags: int
    ciaddr: str
    yiaddr: str
    siaddr: str
    giaddr: str
    mac: str
    file: str
    options: dict[int, bytes]

    @property
    def message_type(self) -> int:
        value = self.options.get(OPT_TYPE, b"\0")
        return value[0] if value else 0

    @property
    def pxe_client(self) -> bool:
        return self.options.get(OPT_VENDOR_CLASS, b"").startswith(b"PXEClient")

    @property
    def ipxe(self) -> bool:
        return (
            b"iPXE" in self.options.get(OPT_USER_CLASS, b"") or 175 in self.options or self.chained
        )

    @property
    def chained(self) -> bool:
        """An iPXE this server handed out (it asks with the user class the offer carried)."""
        return CHAINED_CLASS in self.options.get(OPT_USER_CLASS, b"")

    @property
    def architecture(self) -> int:
        value = self.options.get(OPT_ARCH, b"")
        return struct.unpack("!H", value[:2])[0] if len(value) >= 2 else 0


def _ip(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def parse_packet(data: bytes) -> Packet | None:
    """A BOOTP/DHCP packet, or None when it is not one (short, no magic, options cut off)."""
    if len(data) < 240 or data[236:240] != MAGIC:
        return None
    op, htype, hlen = data[0], data[1], data[2]
    if htype != 1 or hlen != 6:
        return None
    xid, _secs, flags = struct.unpack("!IHH", data[4:12])
    options: dict[int, bytes] = {}
    i = 240
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            return None
        options[code] = options.get(code, b"") + data[i + 2 : i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    mac = ":".join(f"{b:02x}" for b in data[28:34])
    return Packet(
        op,
        xid,
        flags,
        _ip(data[12:16]),
        _ip(data[16:20]),
        _ip(data[20:24]),
        _ip(data[24:28]),
        mac,
        data[108:236].split(b"\0", 1)[0].decode("ascii", "replace"),
        options,
    )


def build_packet(
    reply_to: Packet,
    message_type: int,
    *,
    yiaddr: str,
    siaddr: str,
    file: str,
    options: dict[int, bytes],
) -> bytes:
    head = struct.pack("!BBBBIHH", 2, 1, 6, 0, reply_to.xid, 0, reply_to.flags)
    addresses = b"".join(
        ipaddress.IPv4Address(a).packed for a in (reply_to.ciaddr, yiaddr, siaddr, reply_to.giaddr)
    )
    chaddr = bytes.fromhex(reply_to.mac.replace(":", "")) + bytes(10)
    body = head + addresses + chaddr + bytes(64) + file.encode()[:127].ljust(128, b"\0") + MAGIC
    opts = {OPT_TYPE: bytes([message_type]), **options}
    for code, value in opts.items():
        for start in range(0, max(len(value), 1), 255):
            chunk = value[start : start + 255]
            body += bytes([code, len(chunk)]) + chunk
    return body + b"\xff"


@dataclass
class DhcpSettings:
    server_ip: str  # this server's address on the boot network (siaddr, option 54)
    http_url: str  # where iPXE finds /boot.ipxe
    mode: str = "proxy"  # proxy | full
    pool: tuple[str, str] | None = None  # full mode: first and last address to hand out
    netmask: str = "255.255.255.0"
    router: str | None = None
    dns: tuple[str, ...] = ()
    lease_seconds: int = 3600
    answer_unknown: bool = False
    chain_ipxe: bool = False  # hand BIOS iPXE firmware this server's undionly.kpxe first
    known: Callable[[str], bool] = lambda _mac: False
    leases: dict[str, str] = field(default_factory=dict)  # mac -> address (full mode)


def boot_file(packet: Packet, settings: DhcpSettings) -> str | None:
    """The HTTP script for iPXE, the iPXE binary for PXE firmware, None when there is none for
    the client's architecture."""
    chain = settings.chain_ipxe and not packet.chained and packet.architecture in BIOS_ARCHES
    if packet.ipxe and not chain:
        return f"{settings.http_url}/boot.ipxe"
    if packet.architecture in BIOS_ARCHES:
        return BIOS_FILE
    if packet.architecture in EFI_X64_ARCHES:
        return EFI_FILE
    return None


def _lease(packet: Packet, settings: DhcpSettings) -> str | None:
    if packet.mac in settings.leases:
        return settings.leases[packet.mac]
    if settings.pool is None:
        return None
    first, last = (int(ipaddress.IPv4Address(a)) for a in settings.pool)
    taken = set(settings.leases.values())
    for value in range(first, last + 1):
        address = str(ipaddress.IPv4Address(value))
        if address not in taken:
            settings.leases[packet.mac] = address
            return address
    return None


def answer(packet: Packet, settings: DhcpSettings) -> bytes | None:
    """The reply to one client packet, or None (not ours to answer)."""
    if packet.op != 1 or packet.message_type not in (DISCOVER, REQUEST):
        return None
    if not settings.answer_unknown and not settings.known(packet.mac):
        log.info("dhcp %s: not in the inventory, not answered", packet.mac)
        return None
    if settings.mode == "proxy" and not packet.pxe_client:
        return None  # the network's DHCP server answers everything else
    file = boot_file(packet, settings)
    if file is None:
        log.info(
            "dhcp %s: architecture %d has no iPXE binary, no boot file",
            packet.mac,
            packet.architecture,
        )
        if settings.mode == "proxy":
            return None
    reply_type = OFFER if packet.message_type == DISCOVER else ACK
    options: dict[int, bytes] = {OPT_SERVER: ipaddress.IPv4Address(settings.server_ip).packed}
    if packet.pxe_client and file is not None:
        options[OPT_VENDOR_CLASS] = b"PXEClient"
        options[OPT_PXE] = bytes(
            [6, 1, 8, 255]
        )  # PXE_DISCOVERY_CONTROL: boot the file given, no menu
        if OPT_UUID in packet.options:
            options[OPT_UUID] = packet.options[OPT_UUID]
    if file is not None and "://" not in file:
        options[OPT_USER_CLASS] = CHAINED_CLASS  # the iPXE it loads asks with it (loop-breaking)
    yiaddr = "0.0.0.0"
    if settings.mode == "full":
        address = _lease(packet, settings)
        if address is None:
            log.warning("dhcp %s: the pool is exhausted", packet.mac)
            return None
        requested = packet.options.get(OPT_REQUESTED)
        if packet.message_type == REQUEST and requested and _ip(requested) != address:
            return build_packet(
                packet, NAK, yiaddr="0.0.0.0", siaddr="0.0.0.0", file="", options=options
            )
        yiaddr = address
        options[OPT_MASK] = ipaddress.IPv4Address(settings.netmask).packed
        options[OPT_LEASE] = struct.pack("!I", settings.lease_seconds)
        if settings.router:
            options[OPT_ROUTER] = ipaddress.IPv4Address(settings.router).packed
        if settings.dns:
            options[OPT_DNS] = b"".join(ipaddress.IPv4Address(d).packed for d in settings.dns)
    log.info(
        "dhcp %s: %s %s, boot %s (arch %d, %s)",
        packet.mac,
        "offer" if reply_type == OFFER else "ack",
        yiaddr,
        file or "nothing",
        packet.architecture,
        _client_kind(packet),
    )
    return build_packet(
        packet,
        reply_type,
        yiaddr=yiaddr,
        siaddr=settings.server_ip if file else "0.0.0.0",
        file=file or "",
        options=options,
    )


def _client_kind(packet: Packet) -> str:
    if packet.chained:
        return "iPXE from this server"
    if packet.ipxe:
        return "iPXE"
    return "PXE firmware" if packet.pxe_client else "no PXE"


class DhcpServer:
    """Answers on ``host:port`` (67 for DHCP, 4011 for the PXE boot server) until shut down;
    replies go to the client's port 68, broadcast unless ``reply_to`` overrides (tests)."""

    def __init__(
        self,
        settings: DhcpSettings,
        host: str = "0.0.0.0",
        port: int = 67,
        reply_to: tuple[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.bind((host, port))
        self.address = self.sock.getsockname()
        self.reply_to = reply_to
        self._stop = threading.Event()

    def serve_forever(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                data, client = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            packet = parse_packet(data)
            reply = answer(packet, self.settings) if packet is not None else None
            if reply is None:
                continue
            if self.reply_to is not None:
                destination = self.reply_to
            elif client[1] == 68 and packet is not None and packet.ciaddr == "0.0.0.0":
                destination = ("255.255.255.255", 68)
            else:
                destination = client
            self.sock.sendto(reply, destination)

    def shutdown(self) -> None:
        self._stop.set()
        self.sock.close()
