"""Answers to IPv6 router solicitations, so that iPXE does not wait for a router that is absent.

iPXE built with IPv6 (Debian 12's ``ipxe`` and ``ipxe-qemu``: the NIC ROMs, ``undionly.kpxe``
and ``ipxe.efi``) configures a network device with all of its configurators at once, DHCPv4
and IPv6 router discovery, and boots only when every one has finished (``ifconf``). Router
discovery of that build (a 2019 snapshot) solicits at 0, 0.25, 0.75, 1.75, 3.75 and 7.75 s and
gives up only at 15.75 s (the retry timer's default 1/4 s, doubled up to its 10 s limit; iPXE
shortened it to 1/8 s .. 3 s in late 2020). On a network without an IPv6 router each iPXE stage
therefore waits about 16 s after its DHCP ack before it fetches anything.

A solicitation from a machine this server answers (the inventory's, or any with
``answer_unknown``) gets a router advertisement that configures nothing: router lifetime 0
(not a default router), no prefix, no DHCPv6 flags. iPXE takes the first solicited
advertisement, ends router discovery and boots at once; an operating system learns nothing
from it (no route, no address). The answer is unicast to the machine that asked and sent
``ANSWER_DELAY`` after its first solicitation, later than RFC 4861 lets a real router take
(0.5 s), so a real router's answer always reaches iPXE first (iPXE ignores any later one); and
on a link where another router advertised in the last ``ROUTER_MEMORY`` seconds nothing is sent
at all.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("provision.serve.ndp")

ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT = 133, 134
OPT_SOURCE_LINK_ADDRESS = 1
ALL_ROUTERS = "ff02::2"
ICMP6_FILTER = 1  # <netinet/icmp6.h>: the socket option, at level IPPROTO_ICMPV6
ANSWER_DELAY = 0.6  # seconds after the first solicitation; a router answers within 0.5
ROUTER_MEMORY = 3600.0  # seconds a router seen advertising on a link keeps us quiet there
RESCAN_EVERY = 5.0  # seconds between looks for new interfaces (to join all-routers on)
# type 134, code 0, checksum (the kernel's), hop limit 0, no flags, router lifetime 0,
# reachable time 0, retransmission timer 0: "I am not a router, and there is nothing to learn"
ADVERTISEMENT = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0)


def solicitation_mac(message: bytes, source: str) -> str | None:
    """The MAC of a router solicitation's sender: its source link-layer address option, else the
    EUI-64 of its link-local source address; None when it carries neither."""
    i = 8
    while i + 2 <= len(message):
        kind, length = message[i], message[i + 1] * 8
        if length == 0 or i + length > len(message):
            return None  # malformed (RFC 4861 4.6: a zero length is invalid)
        if kind == OPT_SOURCE_LINK_ADDRESS and length >= 8:
            return ":".join(f"{b:02x}" for b in message[i + 2 : i + 8])
        i += length
    try:
        packed = ipaddress.IPv6Address(source.split("%", 1)[0]).packed
    except ValueError:
        return None
    if packed[:8] != bytes.fromhex("fe80000000000000") or packed[11:13] != b"\xff\xfe":
        return None
    mac = bytes([packed[8] ^ 2, packed[9], packed[10], packed[13], packed[14], packed[15]])
    return ":".join(f"{b:02x}" for b in mac)


@dataclass
class _Pending:
    due: float
    asked: float
    address: tuple[str, int, int, int]


class RouterSolicitationAnswerer:
    """Answers router solicitations on every interface (joining all-routers on each as it
    appears) until shut down. Needs CAP_NET_RAW (OSError otherwise)."""

    def __init__(
        self,
        answers: Callable[[str], bool],
        delay: float = ANSWER_DELAY,
        router_memory: float = ROUTER_MEMORY,
    ) -> None:
        self.answers = answers
        self.delay = delay
        self.router_memory = router_memory
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        blocked = [0xFFFFFFFF] * 8  # Linux's filter: a set bit blocks that ICMPv6 type
        for kind in (ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT):
            blocked[kind >> 5] &= ~(1 << (kind & 31))
        self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *blocked))
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)  # RFC 4861
        self.joined: set[int] = set()
        self.routers: dict[int, tuple[float, str]] = {}  # interface -> (last seen, router)
        self.pending: dict[str, _Pending] = {}  # mac -> the answer due
        self._stop = threading.Event()
        self._join_all()

    def _join_all(self) -> None:
        group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS)
        for index, _name in socket.if_nameindex():
            if index in self.joined:
                continue
            try:
                self.sock.setsockopt(
                    socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack("@I", index)
                )
            except OSError:
                continue  # no IPv6 or no multicast there (lo): nothing can solicit on it
            self.joined.add(index)

    def receive(self, message: bytes, address: tuple[str, int, int, int], hops: int) -> None:
        """One ICMPv6 message from ``address`` (host, port, flow, interface)."""
        if len(message) < 8 or message[1] != 0 or hops != 255:
            return  # RFC 4861 6.1: not from the link itself, or not neighbour discovery
        source, interface = address[0].split("%", 1)[0], address[3]
        now = time.monotonic()
        if message[0] == ROUTER_ADVERTISEMENT:
            if interface not in self.routers or self.routers[interface][1] != source:
                log.info("ra: router %s advertises on interface %d: it answers", source, interface)
            self.routers[interface] = (now, source)
            return
        if message[0] != ROUTER_SOLICITATION or source == "::":
            return  # an unspecified source cannot be answered by unicast
        mac = solicitation_mac(message, source)
        if mac is None or mac in self.pending or not self.answers(mac):
            return
        self.pending[mac] = _Pending(now + self.delay, now, address)

    def send_due(self) -> None:
        now = time.monotonic()
        for mac, pending in list(self.pending.items()):
            if pending.due > now:
                continue
            del self.pending[mac]
            seen = self.routers.get(pending.address[3])
            if seen is not None and seen[0] > pending.asked - self.router_memory:
                continue  # a router is there: it answers
            try:
                self.sock.sendto(ADVERTISEMENT, pending.address)
            except OSError as exc:
                log.warning("ra %s: not sent to %s: %s", mac, pending.address[0], exc.strerror)
                continue
            log.info(
                "ra %s: answered its router solicitation (lifetime 0, no prefix: not a router)",
                mac,
            )

    def serve_forever(self) -> None:
        rescan = time.monotonic() + RESCAN_EVERY
        space = socket.CMSG_SPACE(4)
        while not self._stop.is_set():
            now = time.monotonic()
            waits = [0.5, rescan - now, *(p.due - now for p in self.pending.values())]
            try:
                ready, _, _ = select.select([self.sock], [], [], max(0.0, min(waits)))
                if ready:
                    message, ancillary, _flags, address = self.sock.recvmsg(1500, space)
                    hops = next(
                        (
                            struct.unpack("@i", data[:4])[0]
                            for level, kind, data in ancillary
                            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT
                        ),
                        0,
                    )
                    self.receive(message, address, hops)
            except (OSError, ValueError) as exc:
                if not self._stop.is_set():
                    log.warning("ra: router solicitations no longer answered: %s", exc)
                return
            self.send_due()
            if time.monotonic() >= rescan:
                self._join_all()
                rescan = time.monotonic() + RESCAN_EVERY

    def shutdown(self) -> None:
        self._stop.set()
        self.sock.close()
