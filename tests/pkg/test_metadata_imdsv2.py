"""The metadata component's own program (pkg/metadata/files/metadata), run on this host with
exactly the busybox applets its recipe links (awk reads the JSON), against a stand-in EC2 metadata service on
127.0.0.1 that requires IMDSv2 as instances launched by the aws provider do: a token from
``PUT /latest/api/token`` (with the TTL header), then that token on every read; a read without
it is refused with 401. The program runs in its own UTS namespace, so setting the hostname
does not touch the host's."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aws.imds_standin import KEY, TOKEN, Imds, serve_imds
from pkg_testkit import run_metadata_program

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "pkg" / "metadata"


def run_metadata(imds: Imds, applets: Path, tmp_path: Path) -> tuple[str, Path]:
    return run_metadata_program(applets, tmp_path, {"METADATA_URL": imds.url})


@pytest.fixture
def imds() -> Iterator[Imds]:
    served = Imds(files={})
    server = serve_imds(served)
    yield served
    server.shutdown()


def test_metadata_reads_user_data_hostname_and_key_with_an_imdsv2_token(
    imds: Imds, applets: Path, tmp_path: Path
) -> None:
    tree = {
        "hostname": {"content": "shop-web-00001"},
        "userdata": {"content": "hello from the group"},
    }
    imds.files.update(
        {
            "user-data": json.dumps(tree).encode(),
            "meta-data/hostname": b"ip-10-0-0-7.ec2.internal",
            "meta-data/public-keys/0/openssh-key": KEY.encode() + b"\n",
        }
    )
    out, config = run_metadata(imds, applets, tmp_path)
    assert imds.refused == []  # every read carried the token
    assert len(imds.puts) == 1 and imds.puts[0]["X-aws-ec2-metadata-token-ttl-seconds"] == "300"
    assert "/latest/user-data" in imds.served
    assert (
        config / "hostname"
    ).read_text().strip() == "shop-web-00001"  # the user data's name wins
    assert "hostname-now: shop-web-00001" in out
    assert (config / "userdata").read_text() == "hello from the group"
    keys = config / "ssh" / "authorized_keys"
    assert keys.read_text().splitlines() == [KEY] and oct(keys.stat().st_mode & 0o777) == "0o600"
    assert "IMDSv2" in out and TOKEN not in out


def test_without_a_hostname_in_user_data_the_instance_hostname_is_used(
    imds: Imds, applets: Path, tmp_path: Path
) -> None:
    imds.files.update(
        {
            "user-data": b"#!/bin/sh\necho plain user data\n",
            "meta-data/hostname": b"ip-10-0-0-7.ec2.internal",
        }
    )
    out, config = run_metadata(imds, applets, tmp_path)
    assert imds.refused == []
    assert (config / "userdata").read_text() == "#!/bin/sh\necho plain user data\n"
    assert (config / "hostname").read_text().strip() == "ip-10-0-0-7.ec2.internal"
    assert "hostname-now: ip-10-0-0-7.ec2.internal" in out
    assert not (config / "ssh").exists()  # no key pair on this instance


def test_the_recipe_links_every_applet_the_program_calls() -> None:
    recipe = yaml.safe_load((RECIPE / "build.yml").read_text())
    linked = {Path(link).name for link in recipe["symlinks"]}
    assert {"nc", "tr", "head", "timeout", "wget", "sed", "grep", "hostname"} <= linked
    assert os.access(RECIPE / "files" / "metadata", os.R_OK)
