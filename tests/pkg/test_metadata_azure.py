"""The metadata component's program on Azure, run on this host with exactly its recipe's applets
against stand-ins on 127.0.0.1: Azure's IMDS (answers only ``Metadata: true``; user
data base64, the VM's name, its SSH keys) and the WireServer (the goal state; the health report
it records). Azure is recognised by its chassis asset tag in DMI. Without the Ready report Azure
fails the provisioning of a VM made from a generalized image."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure_cloud.guest_standin import ASSET_TAG, KEYS, Azure, serve_azure_guest
from pkg_testkit import run_metadata_program


@pytest.fixture
def azure() -> Iterator[tuple[Azure, str]]:
    served = Azure()
    server = serve_azure_guest(served)
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _run(url: str, applets: Path, tmp_path: Path, asset_tag: str = ASSET_TAG) -> tuple[str, Path]:
    dmi = tmp_path / "dmi"
    dmi.mkdir(exist_ok=True)
    (dmi / "chassis_asset_tag").write_text(asset_tag + "\n")
    return run_metadata_program(
        applets,
        tmp_path,
        {"METADATA_URL": url, "METADATA_WIRESERVER": url, "METADATA_DMI": str(dmi)},
    )


def test_on_azure_it_reads_imds_and_reports_ready_to_the_wireserver(
    azure: tuple[Azure, str], applets: Path, tmp_path: Path
) -> None:
    served, url = azure
    tree = {"userdata": {"content": "hello from azure"}}
    served.compute.update(
        {
            "userData": base64.b64encode(json.dumps(tree).encode()).decode(),
            "name": "web-1a2b",
            "publicKeys": [
                {"keyData": k, "path": "/home/provision/.ssh/authorized_keys"} for k in KEYS
            ],
        }
    )
    out, config = _run(url, applets, tmp_path)
    assert served.refused == []  # every IMDS read carried "Metadata: true"
    assert (config / "userdata").read_text() == "hello from azure"
    assert (
        config / "hostname"
    ).read_text().strip() == "web-1a2b" and "hostname-now: web-1a2b" in out
    assert (config / "ssh" / "authorized_keys").read_text().splitlines() == KEYS
    assert served.goal_state_reads == 1 and len(served.reports) == 1
    headers, body = served.reports[0]
    assert headers["x-ms-version"] == "2012-11-30" and headers["content-type"].startswith(
        "text/xml"
    )
    assert "<GoalStateIncarnation>3</GoalStateIncarnation>" in body
    assert "<ContainerId>c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2</ContainerId>" in body
    assert "<InstanceId>896c0a3f-1ae4-4bd6-8b6f-24c1fa0c5de0._web-1</InstanceId>" in body
    assert "<State>Ready</State>" in body
    assert "reported Ready" in out


def test_without_user_data_it_still_reports_ready(
    azure: tuple[Azure, str], applets: Path, tmp_path: Path
) -> None:
    served, url = azure
    served.compute.update({"userData": "", "name": "bare"})
    out, config = _run(url, applets, tmp_path)
    assert len(served.reports) == 1 and "<State>Ready</State>" in served.reports[0][1]
    assert not (config / "userdata").exists()


def test_elsewhere_it_never_talks_to_the_wireserver(
    azure: tuple[Azure, str], applets: Path, tmp_path: Path
) -> None:
    served, url = azure
    _run(url, applets, tmp_path, asset_tag="Not Specified")
    assert served.goal_state_reads == 0 and served.reports == []
