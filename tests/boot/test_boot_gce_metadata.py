"""A machine boots with its user data, hostname and SSH keys from a GCE metadata server, as
instances of the gcp target do: QEMU's user network is 169.254.0.0/16, and the guest's
connections to 169.254.169.254:80 are forwarded to the stand-in on the host
(tests/gcp/metadata_standin.py), which refuses every read without ``Metadata-Flavor: Google``.
Booted as kernel+initrd, and as the ``gcp`` format's disk (what GCE boots: the tarball
unpacked sparse, booting under SeaBIOS)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import boot_rig as rig
import pytest
from boot_machine import Machine, free_port
from gcp.metadata_standin import serve_gce_metadata
from test_boot_imdsv2 import wait_agent

pytestmark = [pytest.mark.boot, pytest.mark.timeout(400)]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGceAlice alice@laptop"


@pytest.mark.parametrize("boot", ["kernel+initrd", "gcp"])
def test_a_machine_reads_user_data_hostname_and_keys_from_the_gce_metadata_server(
    tmp_path: Path, boot: str
) -> None:
    spec = rig.REPO / "tests/boot/specs/imds.yml"
    kernel, initrd, _digest = rig.build_with_provision([spec], tmp_path, "gce")
    disk = None
    if boot == "gcp":
        out = tmp_path / "gcp"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "provision",
                "build",
                "-q",
                "-f",
                "gcp",
                "-o",
                str(out),
                "--name",
                "gce",
                str(spec),
            ],
            cwd=rig.REPO,
            check=True,
            capture_output=True,
        )
        subprocess.run(["tar", "-xzf", str(out / "gce.img.tar.gz"), "-C", str(out)], check=True)
        disk = out / "disk.raw"
    metadata = serve_gce_metadata(
        {
            "instance/hostname": "demo-web-00001-3f2a9c41d0.us-central1-a.c.my-project.internal",
            "instance/attributes/user-data": "hello from the group",
            "instance/attributes/ssh-keys": f"alice:{KEY}\n",
        }
    )
    busybox = shutil.which("busybox")
    assert busybox is not None, "needs busybox-static on the host"
    port = metadata.url.rsplit(":", 1)[1]
    user_net = (
        ",net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15"
        f",guestfwd=tcp:169.254.169.254:80-cmd:{busybox} nc 127.0.0.1 {port}"
    )
    agent_port = free_port()
    machine = Machine(
        None if disk else kernel,
        None if disk else initrd,
        tmp_path,
        publish=[(agent_port, 7080)],
        user_net=user_net,
        disk=disk,
    )
    try:
        machine.wait_for(r"metadata: read metadata from the GCP metadata server", 180)
        machine.wait_for(r"metadata: hostname demo-web-00001-3f2a9c41d0", 30)
        assert wait_agent(agent_port)["hostname"] == "demo-web-00001-3f2a9c41d0"
        assert machine.shell("cat /run/config/userdata").strip() == "hello from the group"
        assert KEY in machine.shell("cat /run/config/ssh/authorized_keys")
    finally:
        machine.kill()
        metadata.close()
    assert metadata.refused == []  # every read carried Metadata-Flavor: Google
    assert "/computeMetadata/v1/instance/attributes/user-data" in metadata.served
