"""TFTP chainloading by real firmware, BIOS and UEFI, each in network namespaces of its own
(netns_testkit): the firmware gets an iPXE binary of Debian's ipxe package over TFTP from
`provision serve`, that iPXE gets the HTTP boot script, and the machine boots the kernel and
busybox initrd of its group (the stand-in prints STANDIN-READY on the serial console).

What is real and what is not, precisely:

* UEFI: OVMF (Debian's ovmf) on q35 with a virtio-net NIC whose option ROM is removed
  (``romfile=``), so the network stack is OVMF's own (VirtioNetDxe, SNP, its PXE base code):
  genuine non-iPXE PXE firmware. It asks with ``PXEClient:Arch:00007`` and no user class. The
  network's DHCP server is dnsmasq (Debian's, in a namespace of its own: addresses only, no
  boot file); `provision serve --dhcp proxy` only says where to boot (proxyDHCP: an offer
  and an ack with no address). OVMF fetches ``ipxe.efi`` over our TFTP (with its tsize, blksize and windowsize
  options), ipxe.efi asks again with the user class ``iPXE``, gets the HTTP URL and boots.
* BIOS: SeaBIOS has no network stack; the only BIOS PXE firmware QEMU has is its NIC's option
  ROM, which is itself iPXE (Debian's ipxe-qemu). A vendor PXE ROM asking without a user class
  is therefore not available here (that branch is tested on the wire in test_dhcp.py). With
  ``--dhcp-chain-ipxe`` the server hands that iPXE ROM (user class ``iPXE``, architecture 0)
  ``undionly.kpxe`` over our TFTP; undionly.kpxe runs on the ROM's PXE API exactly as on a
  vendor ROM, asks again with the user class the offer carried (``provision``, taken from the
  PXE stack's cached DHCP packets), gets the HTTP URL and boots. `serve --dhcp full` is the
  only DHCP server there.
* The third layout of docs/metal.md's DHCP choices: dnsmasq hands out the boot files itself
  (its configuration as that page gives it) and `serve` runs without `--dhcp`, serving TFTP
  and HTTP only; booted by OVMF as above.
"""

from __future__ import annotations

import datetime
import re
import shutil
from pathlib import Path

import pytest
from netns_testkit import (
    MAC,
    OVMF_CODE,
    OVMF_VARS,
    SERVER,
    STAGE_WAIT_BOUND,
    LabNetwork,
    write_lab,
)

pytestmark = [pytest.mark.boot, pytest.mark.timeout(300)]
HTTP_SCRIPT = f"http://{SERVER}:8080/boot.ipxe"


def ovmf_machine(vars_copy: Path) -> list[str]:
    """q35 with OVMF, its NIC without an option ROM: the network stack is OVMF's own."""
    return [
        "-machine",
        "q35",
        "-drive",
        f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,file={vars_copy}",
        "-device",
        f"virtio-net-pci,netdev=n0,mac={MAC},romfile=,bootindex=1",
    ]


def assert_no_stage_waits(lab: LabNetwork, stages: list[str]) -> None:
    """Each stage fetched its next file at once after serve's DHCP answer: the iPXE stages'
    router solicitations were answered (without that, each waits ~16 s for an IPv6 router)."""
    waits = lab.stage_waits()
    assert [name for name, _ in waits] == stages, waits
    assert all(wait < STAGE_WAIT_BOUND for _, wait in waits), waits
    assert f"ra {MAC}: answered its router solicitation" in lab.log("serve.log")


def dhcp_lines(log: str) -> list[str]:
    return [
        line.split("provision.serve.dhcp ", 1)[1]
        for line in log.splitlines()
        if "provision.serve.dhcp " in line
    ]


def test_bios_ipxe_rom_chainloads_undionly_over_tftp_then_boots_over_http(
    single_network: LabNetwork,
) -> None:
    lab = single_network
    log = lab.pxe_boot_with_full_dhcp("--dhcp-chain-ipxe")
    answers = dhcp_lines(log)
    # the NIC ROM (arch 0, iPXE) is handed undionly.kpxe by TFTP, in the offer and the ack
    assert answers[:2] == [
        f"dhcp {MAC}: offer 192.168.77.10, boot undionly.kpxe (arch 0, iPXE)",
        f"dhcp {MAC}: ack 192.168.77.10, boot undionly.kpxe (arch 0, iPXE)",
    ], answers
    tftp = re.findall(r"tftp 192\.168\.77\.10: (read|sent) (\S+)(.*)", log)
    assert [(kind, name) for kind, name, _ in tftp] == [
        ("read", "undionly.kpxe"),
        ("sent", "undionly.kpxe"),
    ]
    assert "blksize=" in tftp[0][2] and "tsize=" in tftp[0][2]  # the options iPXE sends
    # undionly.kpxe asks as the iPXE this server handed out and gets the HTTP script
    assert answers[2:4] == [
        f"dhcp {MAC}: offer 192.168.77.10, boot {HTTP_SCRIPT} (arch 0, iPXE from this server)",
        f"dhcp {MAC}: ack 192.168.77.10, boot {HTTP_SCRIPT} (arch 0, iPXE from this server)",
    ], answers
    assert log.index("sent undionly.kpxe") < log.index(HTTP_SCRIPT)
    assert_no_stage_waits(lab, ["undionly.kpxe", "/ipxe"])  # measured before: 16.9 s, 17.9 s


def test_uefi_pxe_firmware_beside_dnsmasq_gets_ipxe_efi_by_tftp_from_proxy_dhcp(
    network_with_dnsmasq: LabNetwork,
) -> None:
    lab = network_with_dnsmasq
    root = write_lab(lab.tmp)
    lab.start_dnsmasq()
    lab.start_serve(root, "--tftp", f"{SERVER}:69", "--dhcp", "proxy")
    vars_copy = lab.tmp / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, vars_copy)
    lab.start_machine(*ovmf_machine(vars_copy), mem="512")
    lab.wait_for_serial("STANDIN-READY", 150)
    log, serial, dnsmasq = lab.log("serve.log"), lab.log("serial.log"), lab.log("dnsmasq.log")
    answers = dhcp_lines(log)
    # OVMF's PXE: no address from us (proxy), ipxe.efi for architecture 7, no iPXE user class
    assert answers[0] == f"dhcp {MAC}: offer 0.0.0.0, boot ipxe.efi (arch 7, PXE firmware)", answers
    address = re.search(r"DHCPACK\(vb\) (192\.168\.77\.5\d) " + MAC, dnsmasq)
    assert address, dnsmasq  # the address came from dnsmasq
    assert f"Station IP address is {address[1]}" in serial and "NBP filename is ipxe.efi" in serial
    tftp = re.findall(rf"tftp {re.escape(address[1])}: (read|sent) (\S+)(.*)", log)
    assert ("sent", "ipxe.efi") in [(kind, name) for kind, name, _ in tftp], log
    assert any(
        "tsize=" in options and "blksize=" in options for kind, _, options in tftp if kind == "read"
    )
    assert re.search(r"sent ipxe\.efi \(\d+ bytes, blksize 1468, window 4\)", log), log  # RFC 7440
    # ipxe.efi then asks as iPXE and is told the HTTP script, which boots (under EFI, initrd=)
    http = [a for a in answers if HTTP_SCRIPT in a]
    assert http and all("(arch 7, iPXE)" in a for a in http), answers
    assert log.index("sent ipxe.efi") < log.index(HTTP_SCRIPT)
    assert "iPXE" in serial and "EFI stub: Loaded initrd from command line option" in serial
    assert "boot ipxe.efi" not in "\n".join(answers[answers.index(http[0]) :])  # no loop
    # OVMF reads ipxe.efi twice (its size, then the file); ipxe.efi waited 16.4 s before
    assert_no_stage_waits(lab, ["ipxe.efi", "ipxe.efi", "/ipxe"])


def test_uefi_boots_when_the_networks_dhcp_server_gives_the_boot_files(
    network_with_dnsmasq: LabNetwork,
) -> None:
    lab = network_with_dnsmasq
    root = write_lab(lab.tmp)
    lab.start_dnsmasq(  # docs/metal.md's dnsmasq lines
        "--dhcp-userclass=set:ipxe,iPXE",
        "--dhcp-match=set:efi,option:client-arch,7",
        "--dhcp-match=set:efi,option:client-arch,9",
        f"--dhcp-boot=tag:ipxe,{HTTP_SCRIPT}",
        f"--dhcp-boot=tag:!ipxe,tag:efi,ipxe.efi,,{SERVER}",
        f"--dhcp-boot=tag:!ipxe,tag:!efi,undionly.kpxe,,{SERVER}",
        "--dhcp-option=tag:ipxe,encap:175,176,1",  # no-pxedhcp: iPXE waits for no proxy
    )
    lab.start_serve(root, "--tftp", f"{SERVER}:69")
    vars_copy = lab.tmp / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, vars_copy)
    lab.start_machine(*ovmf_machine(vars_copy), mem="512")
    lab.wait_for_serial("STANDIN-READY", 150)
    log, serial = lab.log("serve.log"), lab.log("serial.log")
    assert not dhcp_lines(log)  # serve answered no DHCP
    assert "NBP filename is ipxe.efi" in serial and f"Filename: {HTTP_SCRIPT}" in serial
    assert re.search(r"tftp 192\.168\.77\.5\d: sent ipxe\.efi", log), log
    # no waits in ipxe.efi: one DISCOVER, not a second one a second later while it waits 2 s
    # for proxyDHCP offers (measured 3.3 s before no-pxedhcp); serve answered its router
    # solicitation and the script was asked for at once after (16-18 s before)
    dnsmasq = lab.log("dnsmasq.log")
    ipxe_xids = set(re.findall(r" (\d+) user class: iPXE", dnsmasq))
    assert ipxe_xids, dnsmasq
    for xid in ipxe_xids:
        assert dnsmasq.count(f" {xid} DHCPDISCOVER(") == 1, dnsmasq
    answered = re.search(
        r"^(\S+ \S+) INFO provision\.serve\.ndp ra " + MAC + ": answered", log, re.M
    )
    assert answered, log
    at = datetime.datetime.strptime(answered[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    waits = [float(str(boot["at"])) - at for boot in lab.boots()]
    assert waits and 0 < waits[0] < STAGE_WAIT_BOUND, waits


def test_bios_ipxe_rom_chainloads_through_proxy_dhcp_beside_dnsmasq(
    network_with_dnsmasq: LabNetwork,
) -> None:
    """The chain of the BIOS test when dnsmasq gives the address: the offer that carried the
    user class was a proxyDHCP one, and the ROM's PXE stack still hands it to undionly.kpxe."""
    lab = network_with_dnsmasq
    root = write_lab(lab.tmp)
    lab.start_dnsmasq()
    lab.start_serve(root, "--tftp", f"{SERVER}:69", "--dhcp", "proxy", "--dhcp-chain-ipxe")
    lab.start_machine("-device", f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1", "-boot", "n")
    lab.wait_for_serial("STANDIN-READY", 150)
    log = lab.log("serve.log")
    answers = dhcp_lines(log)
    assert answers[0] == f"dhcp {MAC}: offer 0.0.0.0, boot undionly.kpxe (arch 0, iPXE)", answers
    assert re.search(r"tftp 192\.168\.77\.5\d: sent undionly\.kpxe", log), log
    http = [a for a in answers if HTTP_SCRIPT in a]
    assert http and all("(arch 0, iPXE from this server)" in a for a in http), answers
    assert log.index("sent undionly.kpxe") < log.index(HTTP_SCRIPT)
    assert_no_stage_waits(lab, ["undionly.kpxe", "/ipxe"])
