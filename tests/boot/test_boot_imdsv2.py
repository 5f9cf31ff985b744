"""A machine boots with its user data from an instance metadata service that requires IMDSv2,
as EC2 instances launched by the aws provider do (``HttpTokens: required``): QEMU's user
network is 169.254.0.0/16, and the guest's connections to 169.254.169.254:80 are forwarded to
a stand-in on the host that refuses every read without a session token. The guest's metadata
component gets the token, reads the user data the aws provider writes (the machine's hostname
and the group's user data) and the key pair's key; the agent then reports the hostname."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boot_rig as rig
import pytest
from aws.imds_standin import KEY, Imds, serve_imds
from boot_machine import Machine, free_port

from provision.providers.aws.instances import render_user_data

pytestmark = [pytest.mark.boot, pytest.mark.timeout(400)]


@pytest.mark.parametrize("boot", ["kernel+initrd", "aws"])
def test_a_machine_reads_its_user_data_and_hostname_through_imdsv2(
    tmp_path: Path, boot: str
) -> None:
    """``aws``: the raw disk `provision push aws` uploads, booted through the BIOS as EC2 does."""
    spec = rig.REPO / "tests/boot/specs/imds.yml"
    kernel, initrd, _digest = rig.build_with_provision([spec], tmp_path, "imds")
    disk = None
    if boot == "aws":
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "provision",
                "build",
                "-q",
                "-f",
                "aws",
                "-o",
                str(tmp_path),
                "--name",
                "imds-disk",
                str(spec),
            ],
            cwd=rig.REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        disk = tmp_path / "imds-disk.raw"
    imds = Imds(
        files={
            "user-data": render_user_data("shop-web-00001", "hello from the group").encode(),
            "meta-data/hostname": b"ip-169-254-0-15.ec2.internal",
            "meta-data/public-keys/0/openssh-key": KEY.encode() + b"\n",
        }
    )
    server = serve_imds(imds)
    busybox = shutil.which("busybox")
    assert busybox is not None, "needs busybox-static on the host"
    port = server.server_address[1]
    user_net = (
        ",net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15"
        f",guestfwd=tcp:169.254.169.254:80-cmd:{busybox} nc 127.0.0.1 {port}"
    )
    agent_port = free_port()
    machine = Machine(
        kernel, initrd, tmp_path, publish=[(agent_port, 7080)], user_net=user_net, disk=disk
    )
    try:
        machine.wait_for(
            r"metadata: read user data from the EC2-style metadata service \(IMDSv2\)", 180
        )
        machine.wait_for(r"metadata: hostname shop-web-00001", 30)
        status = wait_agent(agent_port)
        assert status["hostname"] == "shop-web-00001"
        assert machine.shell("cat /run/config/userdata").strip() == "hello from the group"
        assert KEY in machine.shell("cat /run/config/ssh/authorized_keys")
    finally:
        machine.kill()
        server.shutdown()
    assert imds.refused == []  # not one IMDSv1 read
    assert len(imds.puts) == 1 and "/latest/user-data" in imds.served


def wait_agent(port: int, timeout: float = 120.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
                status: dict[str, object] = json.load(answer)
                return status
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"the agent never answered: {last}")
