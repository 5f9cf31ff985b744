"""A machine's side of IPv6 router discovery on the wire (run inside a network namespace):
solicits as iPXE does (to all-routers, hop limit 255, with a source link-layer address option
naming --mac) or, with --advertise, first advertises as a router would (to all-nodes), then
prints one JSON object: every router advertisement that arrived within --wait seconds."""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mac", required=True)
    parser.add_argument("--wait", type=float, default=3.0)
    parser.add_argument("--advertise", action="store_true")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)  # not our own advert
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    index = socket.if_nametoindex("vb")
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    if args.advertise:  # a router: lifetime 1800 s, as radvd sends
        sock.sendto(
            struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0), ("ff02::1", 0, 0, index)
        )
    solicitation = struct.pack("!BBHI", 133, 0, 0, 0) + bytes([1, 1])
    solicitation += bytes.fromhex(args.mac.replace(":", ""))
    started = time.monotonic()
    sock.sendto(solicitation, ("ff02::2", 0, 0, index))
    received = []
    while (left := started + args.wait - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        message, ancillary, _flags, address = sock.recvmsg(1500, 256)
        if message[0] != 134:
            continue
        hops, destination = 0, ""
        for level, kind, data in ancillary:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT:
                hops = struct.unpack("@i", data[:4])[0]
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                destination = socket.inet_ntop(socket.AF_INET6, data[:16])
        _type, code, _sum, hop_limit, flags, lifetime, reachable, retrans = struct.unpack(
            "!BBHBBHII", message[:16]
        )
        received.append(
            {
                "after": round(time.monotonic() - started, 3),
                "source": address[0].split("%", 1)[0],
                "destination": destination,
                "hops": hops,
                "code": code,
                "hop_limit": hop_limit,
                "flags": flags,
                "lifetime": lifetime,
                "reachable": reachable,
                "retrans": retrans,
                "options": message[16:].hex(),
            }
        )
    print(json.dumps({"advertisements": received}))


if __name__ == "__main__":
    main()
