"""What ``provision serve`` tells a booted machine about itself (``/v1/metadata/MAC``): a
reserved machine's name, image and its cluster group's ``userData`` and ``sshKeys`` (through the
real provider), and the limits on what a lab group or a group's properties may put there, each
refusal located. (tests/pkg/test_metadata_serve.py runs the image's metadata program on it.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from test_metal_disks import PaperMachine, lab, request, write_artifact  # noqa: F401

from provision.errors import SpecError
from provision.providers import get_target
from provision.providers.metal.lab import parse_lab
from provision.providers.metal.provider import PROPERTIES, MetalProvider
from provision.providers.metal.server import ServeState, start_http
from provision.schema import check_mapping

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMetalProps alice@laptop"


@pytest.fixture
def served_lab(
    lab: tuple[MetalProvider, list[PaperMachine], Path],  # noqa: F811
) -> Iterator[tuple[MetalProvider, list[PaperMachine], Path, str]]:
    provider, machines, tmp_path = lab
    state = ServeState(provider.lab(), provider.state / "images", state_dir=provider.state)
    server, stop = start_http(state)
    try:
        yield provider, machines, tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop()


def test_a_groups_user_data_and_keys_are_its_machines_metadata(
    served_lab: tuple[MetalProvider, list[PaperMachine], Path, str],
) -> None:
    provider, machines, tmp_path, url = served_lab
    image = write_artifact(tmp_path / "build", 1)
    get_target("metal").publish(provider, image)
    tree = {"motd": {"content": "hi\n"}}
    a_request = request("a", "web", image.digest)
    provider.create_instance(replace(a_request, properties={"userData": tree, "sshKeys": [KEY]}))
    provider.create_instance(request("b", "web", image.digest, userData="#!/bin/sh\n"))
    a = requests.get(f"{url}/v1/metadata/{machines[0].mac}", timeout=5).json()
    assert a == {
        "machine": "node-1",
        "hostname": "lab-web-a",
        "image": image.digest,
        "cluster": "lab",
        "userData": json.dumps(tree, sort_keys=True),
        "sshKeys": [KEY],
    }
    b = requests.get(f"{url}/v1/metadata/{machines[1].mac}", timeout=5).json()
    assert b["userData"] == "#!/bin/sh\n" and "sshKeys" not in b
    assert (
        f"provision.metadata=http://10.0.2.2:8080/v1/metadata/{machines[0].mac}"
        in (machines[0].answers[-1])
    )  # what the machine was told when it booted


def test_properties_refuse_big_user_data_and_multi_line_keys() -> None:
    assert check_mapping(PROPERTIES, {"userData": "x" * 60_000, "sshKeys": [KEY]}) == []
    assert check_mapping(PROPERTIES, {"userData": {"a": {"content": "b"}}}) == []
    problems = check_mapping(
        PROPERTIES, {"userData": "x" * 70_000, "sshKeys": [f"{KEY}\nssh-rsa AAAA forced"]}
    )
    assert [p.path for p in problems] == [("userData",), ("sshKeys",)]
    assert "at most 65536 bytes as JSON" in problems[0].message
    assert check_mapping(PROPERTIES, {"userData": 7}) != []


def test_lab_metadata_problems_are_located() -> None:
    bad = f"""\
profiles:
  web: {{kernel: k}}
groups:
  - name: a
    profile: web
    selector: {{mac: "52:54:00:00:00:01"}}
    metadata: {{hostname: "bad name", userData: [1], sshKeys: ["{KEY}\\nforced", 7]}}
  - name: b
    profile: web
    metadata: {{userData: "{"x" * 70_000}", sshKeys: {KEY}}}
"""
    with pytest.raises(SpecError) as caught:
        parse_lab(bad, "lab.yml")
    text = [str(p) for p in caught.value.problems]
    expected = [
        "lab.yml:7:26: groups[0].metadata.hostname: must be a host name",
        "lab.yml:7:48: groups[0].metadata.userData: must be text or a mapping",
        "lab.yml:7:63: groups[0].metadata.sshKeys[0]: must be an SSH public key (one line)",
        "lab.yml:7:135: groups[0].metadata.sshKeys[1]: must be an SSH public key (one line)",
        "lab.yml:10:26: groups[1].metadata.userData: must be at most 65536 bytes as JSON",
        "lab.yml:10:70039: groups[1].metadata.sshKeys: must be a list of SSH public keys",
    ]
    for want in expected:
        assert any(t.startswith(want) for t in text), (want, text)
    assert len(text) == len(expected)
    good = 'profiles: {web: {kernel: k}}\ngroups: [{name: a, profile: web, metadata: {userData: {m: {content: x}}, sshKeys: ["k 1"], hostname: web-1}}]\n'
    assert parse_lab(good).groups[0].metadata["hostname"] == "web-1"
