"""The metadata component's own program (pkg/metadata/files/metadata), run on this host with
exactly the busybox applets its recipe links, against the stand-in GCE metadata server
(tests/gcp/metadata_standin.py: reads without ``Metadata-Flavor: Google`` refused, EC2's paths
unknown): user data from the ``user-data`` attribute, the hostname
from ``instance/hostname`` (its first label), and ``ssh-keys`` (instance and project, unless
``block-project-ssh-keys``) into the authorized keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gcp.metadata_standin import GceMetadata, serve_gce_metadata
from pkg_testkit import run_metadata_program

ALICE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGceAlice alice@laptop"
BOB = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQBob bob"
CAROL = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAICarol carol"


@pytest.fixture
def gce() -> Iterator[GceMetadata]:
    served = serve_gce_metadata({})
    yield served
    served.close()


def _run(gce: GceMetadata, applets: Path, tmp_path: Path) -> tuple[str, Path]:
    return run_metadata_program(applets, tmp_path, {"METADATA_URL": gce.url})


def test_user_data_hostname_and_ssh_keys_from_the_gce_metadata_server(
    gce: GceMetadata, applets: Path, tmp_path: Path
) -> None:
    gce.values.update(
        {
            "instance/hostname": "demo-web-00001-3f2a9c41d0.us-central1-a.c.my-project.internal",
            "instance/attributes/user-data": "hello from the group",
            "instance/attributes/ssh-keys": f"alice:{ALICE}\nbob:{BOB}\n",
            "project/attributes/ssh-keys": f"carol:{CAROL}",
        }
    )
    out, config = _run(gce, applets, tmp_path)
    assert "read metadata from the GCP metadata server" in out
    assert gce.refused == []  # every read carried Metadata-Flavor: Google
    assert (config / "userdata").read_text() == "hello from the group"
    assert (config / "hostname").read_text().strip() == "demo-web-00001-3f2a9c41d0"
    assert "hostname-now: demo-web-00001-3f2a9c41d0" in out
    keys = config / "ssh" / "authorized_keys"
    assert (
        keys.read_text().splitlines() == [ALICE, BOB, CAROL]
        and oct(keys.stat().st_mode & 0o777) == "0o600"
    )


def test_project_keys_are_left_out_when_the_instance_blocks_them(
    gce: GceMetadata, applets: Path, tmp_path: Path
) -> None:
    gce.values.update(
        {
            "instance/hostname": "solo.us-central1-a.c.my-project.internal",
            "instance/attributes/ssh-keys": f"alice:{ALICE}",
            "instance/attributes/block-project-ssh-keys": "true",
            "project/attributes/ssh-keys": f"carol:{CAROL}",
        }
    )
    out, config = _run(gce, applets, tmp_path)
    assert (config / "ssh" / "authorized_keys").read_text().splitlines() == [ALICE]
    assert not (config / "userdata").exists()  # no user-data attribute: nothing written
    assert (config / "hostname").read_text().strip() == "solo"


def test_a_last_key_without_its_newline_still_lands(
    gce: GceMetadata, applets: Path, tmp_path: Path
) -> None:
    gce.values.update(
        {"instance/hostname": "one.z.c.p.internal", "instance/attributes/ssh-keys": f"bob:{BOB}"}
    )
    _out, config = _run(gce, applets, tmp_path)
    assert (config / "ssh" / "authorized_keys").read_text().splitlines() == [BOB]
