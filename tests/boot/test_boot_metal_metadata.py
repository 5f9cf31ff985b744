"""A machine of examples/web.yml (no onboot DHCP client: its dhcpcd is a service) boots with
the kernel command line ``provision serve``'s boot answer gives a lab group's machine
(``provision.metadata=URL``, serve on the host reached through QEMU's user network) and gets
its group's user data, hostname and SSH key: the metadata component takes a DHCP lease of its
own for the read, gives it up, and the image's dhcpcd then brings the network up as usual
(the agent answers through it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boot_rig as rig
import pytest
import requests
import yaml
from boot_machine import Machine, free_port
from test_boot_imdsv2 import wait_agent

from provision.providers.metal.lab import parse_lab
from provision.providers.metal.server import ServeState, start_http

pytestmark = [pytest.mark.boot, pytest.mark.timeout(400)]
SPECS = [rig.REPO / "examples/web.yml", rig.REPO / "tests/boot/specs/web-test.yml"]
MAC = "52:54:00:12:34:56"  # QEMU's first NIC
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMetalBoot alice@laptop"
TREE = {"motd": {"content": "hello from the lab\n"}}


def test_a_machine_reads_its_groups_metadata_from_provision_serve(tmp_path: Path) -> None:
    kernel, initrd, _digest = rig.build_with_provision(SPECS, tmp_path, "web")
    lab = {
        "profiles": {"web": {"kernel": "web-kernel", "initrd": ["web-initrd.img"],
                             "cmdline": "console=tty0 console=ttyS0 panic=-1 quiet"}},
        "groups": [{"name": "web", "profile": "web", "selector": {"mac": MAC},
                    "metadata": {"hostname": "metal-web-1", "userData": json.dumps(TREE), "sshKeys": [KEY]}}],
        "machines": [{"name": "node-1", "macs": [MAC]}],
    }  # fmt: skip
    state = ServeState(parse_lab(yaml.safe_dump(lab)), tmp_path)
    server, stop = start_http(state)
    busybox = shutil.which("busybox")
    assert busybox is not None, "needs busybox-static on the host"
    # the guest reaches serve at 10.0.2.100:8080 (restrict=on: nothing else of the host)
    user_net = (
        f",guestfwd=tcp:10.0.2.100:8080-cmd:{busybox} nc 127.0.0.1 {server.server_address[1]}"
    )
    script = requests.get(
        f"http://127.0.0.1:{server.server_address[1]}/ipxe", params={"mac": MAC},
        headers={"Host": "10.0.2.100:8080"}, timeout=5,
    ).text  # fmt: skip
    cmdline = next(line for line in script.splitlines() if line.startswith("kernel ")).split(
        " ", 2
    )[2]
    assert cmdline.endswith(f"provision.metadata=http://10.0.2.100:8080/v1/metadata/{MAC}")
    agent_port = free_port()
    machine = Machine(kernel, initrd, tmp_path, publish=[(agent_port, 7080)], user_net=user_net,
                      cmdline=cmdline)  # fmt: skip
    try:
        machine.wait_for(r"metadata: read metadata from provision serve", 180)
        assert wait_agent(agent_port)["hostname"] == "metal-web-1"
        assert machine.shell("cat /run/config/motd").strip() == "hello from the lab"
        assert machine.shell("cat /run/config/ssh/authorized_keys").strip() == KEY
    finally:
        machine.kill()
        stop()
