"""A machine boots as an Azure VM made from a generalized image: its chassis asset tag is
Azure's (``-smbios type=3,asset=...``), and QEMU's user network is 168.0.0.0/7, which holds both
Azure addresses, so the guest's connections to IMDS (169.254.169.254:80) and the WireServer
(168.63.129.16:80) are forwarded to stand-ins on the host. The metadata component reads the user
data the azure provider writes, the VM's name and SSH keys, then reports Ready; the WireServer
stand-in records the report, and the agent reports the hostname."""

from __future__ import annotations

import shutil
from pathlib import Path

import boot_rig as rig
import pytest
from azure_cloud.guest_standin import ASSET_TAG, KEYS, Azure, serve_azure_guest
from boot_machine import Machine, free_port
from test_boot_imdsv2 import wait_agent

from provision.providers.azure.provider import render_user_data

pytestmark = [pytest.mark.boot, pytest.mark.timeout(400)]


def test_a_machine_on_azure_reads_imds_and_reports_ready_to_the_wireserver(tmp_path: Path) -> None:
    kernel, initrd, _digest = rig.build_with_provision(
        [rig.REPO / "tests/boot/specs/imds.yml"], tmp_path, "azure"
    )
    azure = Azure(
        compute={
            "userData": render_user_data("shop-web-00001", "hello from azure"),
            "name": "vm-name",
            "publicKeys": [{"keyData": KEYS[0], "path": "/home/provision/.ssh/authorized_keys"}],
        }
    )
    server = serve_azure_guest(azure)
    busybox = shutil.which("busybox")
    assert busybox is not None, "needs busybox-static on the host"
    port = server.server_address[1]
    forward = f"{busybox} nc 127.0.0.1 {port}"
    user_net = (
        ",net=168.0.0.0/7,host=168.0.0.2,dhcpstart=168.0.0.15"
        f",guestfwd=tcp:169.254.169.254:80-cmd:{forward},guestfwd=tcp:168.63.129.16:80-cmd:{forward}"
    )
    agent_port = free_port()
    machine = Machine(
        kernel,
        initrd,
        tmp_path,
        publish=[(agent_port, 7080)],
        user_net=user_net,
        extra=["-smbios", f"type=3,asset={ASSET_TAG}"],
    )
    try:
        machine.wait_for(
            r"metadata: Azure: reported Ready to the WireServer \(incarnation 3\)", 240
        )
        machine.wait_for(r"metadata: hostname shop-web-00001", 30)
        assert wait_agent(agent_port)["hostname"] == "shop-web-00001"
        assert machine.shell("cat /run/config/userdata").strip() == "hello from azure"
        assert KEYS[0] in machine.shell("cat /run/config/ssh/authorized_keys")
    finally:
        machine.kill()
        server.shutdown()
    assert azure.refused == [] and azure.goal_state_reads == 1
    [(headers, body)] = azure.reports
    assert headers["x-ms-version"] == "2012-11-30" and "<State>Ready</State>" in body
