"""Real firmware on a network of its own (netns_testkit): `provision serve` is the only DHCP
server (--dhcp full) and also serves TFTP; a disk-less QEMU machine on a tap device PXE-boots
with its NIC's own firmware (iPXE from Debian's ipxe-qemu): DHCP hands it an address from the
pool and, since it is iPXE, the boot script URL at once, and it boots the kernel and initrd its
group names, with no wait between the DHCP ack and the script's request (serve answers its
IPv6 router solicitation: ndp.py). (Legacy PXE and UEFI firmware going through TFTP first: test_pxe_chainload.py.)"""

from __future__ import annotations

import pytest
from netns_testkit import MAC, SERVER, STAGE_WAIT_BOUND, LabNetwork

pytestmark = [pytest.mark.boot, pytest.mark.timeout(240)]


def test_firmware_pxe_boots_from_serve_as_the_only_dhcp_server(
    single_network: LabNetwork,
) -> None:
    lab = single_network
    log = lab.pxe_boot_with_full_dhcp()
    assert f"dhcp {MAC}: offer 192.168.77.10" in log and f"dhcp {MAC}: ack 192.168.77.10" in log
    # the firmware is iPXE: it got the HTTP script, and nothing over TFTP
    assert f"boot http://{SERVER}:8080/boot.ipxe (arch 0, iPXE)" in log
    assert "undionly.kpxe" not in log
    # iPXE asked for its script at once after the ack: its router solicitation was answered
    # (without the answer it waits ~16 s for an IPv6 router: measured 16.1 s)
    waits = lab.stage_waits()
    assert [name for name, _ in waits] == ["/ipxe"], waits
    assert all(wait < STAGE_WAIT_BOUND for _, wait in waits), waits
    assert f"ra {MAC}: answered its router solicitation" in log
