"""IPv6 router solicitations answered by `provision serve` on the wire: two network namespaces
joined by a veth pair, `serve --tftp` in one, a machine's side of router discovery
(ndp_client.py, raw ICMPv6 as iPXE sends it) in the other. What iPXE does with the answer (it
stops waiting about 16 s for a router) is shown by the boot tests' stage times
(test_pxe_netns.py, test_pxe_chainload.py)."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netns_testkit import MAC, SERVER, LabNetwork, ip, write_lab

from provision.providers.metal.ndp import solicitation_mac

CLIENT = Path(__file__).with_name("ndp_client.py")
UNKNOWN = "52:54:00:1d:00:99"


def link_local(mac: str) -> str:
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 2, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return str(ipaddress.IPv6Address(bytes.fromhex("fe80000000000000") + eui))


@dataclass
class Link:
    lab: LabNetwork  # serve's namespace
    machine: str  # the machine's namespace


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    """serve's namespace (va, SERVER) and the machine's (vb, MAC), no DAD, no kernel RS."""
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces, raw ICMPv6)")
    name = f"pv-{secrets.token_hex(4)}"
    machine = f"{name}-m"
    ip("netns", "add", name)
    ip("netns", "add", machine)
    lab = LabNetwork(name, tmp_path)
    try:
        ip("-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", machine)
        ip("-n", machine, "link", "set", "vb", "address", MAC)
        for namespace, device in ((name, "va"), (machine, "vb")):
            conf = f"/proc/sys/net/ipv6/conf/{device}"  # the namespace's own, from inside it
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    namespace,
                    "sh",
                    "-c",
                    f"echo 0 > {conf}/accept_dad && echo 0 > {conf}/router_solicitations",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            ip("-n", namespace, "link", "set", "lo", "up")
            ip("-n", namespace, "link", "set", device, "up")
        ip("-n", name, "addr", "add", f"{SERVER}/24", "dev", "va")
        for namespace, device in ((name, "va"), (machine, "vb")):
            wait_for_link_local(namespace, device)
        yield Link(lab, machine)
    finally:
        lab.stop()
        for namespace in (name, machine):
            subprocess.run(["ip", "netns", "del", namespace], check=False, timeout=30)


def wait_for_link_local(namespace: str, device: str) -> None:
    """Until the kernel gave ``device`` its link-local address (linkwatch: up to a second)."""
    deadline = time.monotonic() + 10
    while True:
        shown = subprocess.run(
            ["ip", "-n", namespace, "-6", "addr", "show", "dev", device, "scope", "link"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        if "inet6 fe80::" in shown and "tentative" not in shown:
            return
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)


def solicit(link: Link, mac: str, *, wait: float = 2.5, advertise: bool = False) -> Any:
    argv = [sys.executable, str(CLIENT), "--mac", mac, "--wait", str(wait)]
    done = subprocess.run(
        ["ip", "netns", "exec", link.machine, *argv, *(["--advertise"] if advertise else [])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["advertisements"]


def test_an_inventory_machine_is_told_there_is_no_router_and_nothing_else(
    link: Link,
) -> None:
    lab = link.lab
    lab.start_serve(write_lab(lab.tmp), "--tftp", f"{SERVER}:69")
    assert "answering IPv6 router solicitations" in lab.log("serve.log")
    [advert] = solicit(link, MAC)
    # unicast to the machine that asked, from the link (hop limit 255), configuring nothing:
    # no default router (lifetime 0), no prefix or other option, no DHCPv6 flags
    assert advert["destination"] == link_local(MAC), advert
    assert advert["hops"] == 255 and advert["code"] == 0, advert
    assert (advert["lifetime"], advert["flags"], advert["options"]) == (0, 0, ""), advert
    assert (advert["hop_limit"], advert["reachable"], advert["retrans"]) == (0, 0, 0), advert
    # after the half second RFC 4861 gives a router (a real router's answer reaches iPXE
    # first), long before iPXE's 16 s
    assert 0.5 <= advert["after"] < 2.0, advert
    assert f"ra {MAC}: answered its router solicitation" in lab.log("serve.log")
    # a machine the inventory does not have is not answered
    assert solicit(link, UNKNOWN) == []
    assert f"ra {UNKNOWN}" not in lab.log("serve.log")


def test_a_link_with_a_router_is_left_to_it(link: Link) -> None:
    lab = link.lab
    lab.start_serve(write_lab(lab.tmp), "--tftp", f"{SERVER}:69")
    assert solicit(link, MAC, advertise=True) == []  # the machine's side advertised as a router
    log = lab.log("serve.log")
    assert f"ra: router {link_local(MAC)} advertises on interface" in log, log
    assert f"ra {MAC}: answered" not in log
    assert solicit(link, MAC) == []  # and it is remembered


def test_no_router_answers_turns_them_off(link: Link) -> None:
    lab = link.lab
    lab.start_serve(write_lab(lab.tmp), "--tftp", f"{SERVER}:69", "--no-router-answers")
    assert solicit(link, MAC) == []
    assert "router solicitations" not in lab.log("serve.log")


def test_the_mac_of_a_solicitation() -> None:
    option = bytes([1, 1]) + bytes.fromhex("525400aabbcc")
    head = bytes([133, 0, 0, 0, 0, 0, 0, 0])
    assert solicitation_mac(head + option, "fe80::1") == "52:54:00:aa:bb:cc"
    # no option: the EUI-64 of the link-local source (iPXE and Linux without privacy)
    assert solicitation_mac(head, "fe80::5054:ff:fe1d:1%br0") == "52:54:00:1d:00:01"
    assert solicitation_mac(head, "fe80::1") is None  # not an EUI-64 address
    assert solicitation_mac(head, "2001:db8::5054:ff:fe1d:1") is None  # not link-local
    assert solicitation_mac(head + bytes([1, 0, 0, 0, 0, 0, 0, 0]), "fe80::1") is None  # length 0
    assert solicitation_mac(head + bytes([1, 2]) + bytes(6), "fe80::1") is None  # cut off
