"""``provision serve``'s HTTP side against real requests on 127.0.0.1: files with Range, ETag
and HEAD, nothing outside the root, the per-machine iPXE choice, metadata, the token-guarded
API, and reloading the lab file while serving."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from provision.errors import SpecError
from provision.providers.metal.lab import parse_lab
from provision.providers.metal.server import ServeState, start_http

TOKEN = "TOKEN-MARKER-7d1e"
LAB = """\
profiles:
  web: {kernel: img/web-kernel, initrd: [img/web-initrd.img], cmdline: "console=ttyS0 quiet"}
  db: {kernel: img/web-kernel, initrd: img/web-initrd.img}
  rack: {kernel: img/web-kernel}
groups:
  - {name: by-mac, profile: web, selector: {mac: "52:54:00:00:00:01"},
     metadata: {hostname: web-1, userData: "#cloud-config", sshKeys: ["ssh-ed25519 AAAA k"]}}
  - {name: by-mac-and-rack, profile: db, selector: {mac: "52:54:00:00:00:02", rack: b}}
  - {name: a-rack, profile: rack, selector: {rack: b}}
  - {name: z-rack, profile: web, selector: {rack: b}}
default: exit
machines:
  - {name: node-1, macs: ["52:54:00:00:00:01"]}
  - {name: node-2, macs: ["52-54-00-00-00-02"], labels: {rack: b}}
  - {name: node-3, macs: ["52:54:00:00:00:03"], labels: {rack: b}}
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, ServeState, Path]]:
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "web-kernel").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    (root / "img" / "web-initrd.img").write_bytes(b"initrd" * 1000)
    (tmp_path / "secret").write_text("outside the root")
    os.symlink(tmp_path / "secret", root / "img" / "escape")
    os.symlink("/etc/passwd", root / "img" / "passwd")
    os.symlink("/dev/zero", root / "img" / "zero")
    os.mkfifo(root / "img" / "fifo")
    lab_file = tmp_path / "lab.yml"
    lab_file.write_text(LAB)
    state = ServeState(parse_lab(LAB, str(lab_file)), root, lab_file, TOKEN)
    server, stop = start_http(state)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state, lab_file
    finally:
        stop()


def raw_get(url: str, path: str) -> int:
    """The status of a request for ``path`` sent byte for byte (no client-side normalising)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return int(sock.recv(64).split()[1])


def test_files_are_served_with_ranges_etags_and_head(served: tuple[str, ServeState, Path]) -> None:
    url, state, _ = served
    kernel = (state.root / "img" / "web-kernel").read_bytes()
    whole = requests.get(f"{url}/files/img/web-kernel", timeout=5)
    assert whole.status_code == 200 and whole.content == kernel
    etag = whole.headers["ETag"]
    part = requests.get(
        f"{url}/files/img/web-kernel", headers={"Range": "bytes=1000-1999"}, timeout=5
    )
    assert part.status_code == 206 and part.content == kernel[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(kernel)}"
    tail = requests.get(f"{url}/files/img/web-kernel", headers={"Range": "bytes=-10"}, timeout=5)
    assert tail.status_code == 206 and tail.content == kernel[-10:]
    open_end = requests.get(
        f"{url}/files/img/web-kernel", headers={"Range": f"bytes={len(kernel) - 5}-"}, timeout=5
    )
    assert open_end.content == kernel[-5:]
    beyond = requests.get(
        f"{url}/files/img/web-kernel", headers={"Range": f"bytes={len(kernel)}-"}, timeout=5
    )
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(kernel)}"
    cached = requests.get(f"{url}/files/img/web-kernel", headers={"If-None-Match": etag}, timeout=5)
    assert cached.status_code == 304 and cached.content == b""
    head = requests.head(f"{url}/files/img/web-kernel", timeout=5)
    assert (
        head.status_code == 200
        and head.headers["Content-Length"] == str(len(kernel))
        and head.content == b""
    )
    (state.root / "img" / "web-kernel").write_bytes(b"new kernel")
    assert (
        requests.get(
            f"{url}/files/img/web-kernel", headers={"If-None-Match": etag}, timeout=5
        ).content
        == b"new kernel"
    )


@pytest.mark.parametrize(
    "path",
    [
        "/files/../secret",
        "/files/img/../../secret",
        "/files/%2e%2e/secret",
        "/files/img/%2e%2e/%2e%2e/secret",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/img/escape",
        "/files/img/passwd",
        "/files/img/zero",
        "/files/img/fifo",
        "/files/img",
        "/files/img/",
        "/files/img/web-kernel%00",
        "/files/img\\..\\..\\secret",
    ],
)
def test_nothing_outside_the_root_or_not_a_regular_file_is_served(
    served: tuple[str, ServeState, Path], path: str
) -> None:
    url, _, _ = served
    assert raw_get(url, path) == 404


def test_each_machine_gets_its_groups_profile_most_selectors_first(
    served: tuple[str, ServeState, Path],
) -> None:
    url, state, _ = served
    chain = requests.get(f"{url}/boot.ipxe", timeout=5).text
    assert chain.startswith("#!ipxe\nchain ipxe?mac=${mac:hexhyp}")

    def script(**query: str) -> str:
        return requests.get(f"{url}/ipxe", params=query, timeout=5).text

    web = script(mac="52-54-00-00-00-01", platform="pcbios")
    assert f"kernel {url}/files/img/web-kernel console=ttyS0 quiet" in web
    assert f"initrd --name initrd.img {url}/files/img/web-initrd.img" in web
    efi = script(mac="52:54:00:00:00:01", platform="efi")
    assert f"kernel {url}/files/img/web-kernel initrd=initrd.img console=ttyS0 quiet" in efi
    # node-2 matches by-mac-and-rack (2 selectors), a-rack and z-rack (1 each): the most wins
    assert "kernel " + url + "/files/img/web-kernel\n" in script(
        mac="52:54:00:00:00:02"
    )  # db profile: no cmdline
    # node-3 matches a-rack and z-rack, one selector each: the tie goes to the name, every time
    answers = {script(mac="52:54:00:00:00:03") for _ in range(5)}
    assert len(answers) == 1 and "initrd" not in answers.pop()  # the rack profile has no initrd
    unknown = script(mac="52:54:00:99:99:99")
    assert "exit" in unknown and "kernel" not in unknown
    boots = requests.get(f"{url}/v1/boots", timeout=5).json()
    assert [b["answer"] for b in boots][:3] == [
        "group by-mac",
        "group by-mac",
        "group by-mac-and-rack",
    ]
    assert boots[-1] == {**boots[-1], "mac": "52:54:00:99:99:99", "answer": "default exit"}


def test_metadata_for_a_booted_machine(served: tuple[str, ServeState, Path]) -> None:
    url, _, _ = served
    body = requests.get(f"{url}/v1/metadata/52:54:00:00:00:01", timeout=5).json()
    assert body == {
        "group": "by-mac",
        "machine": "node-1",
        "hostname": "web-1",
        "userData": "#cloud-config",
        "sshKeys": ["ssh-ed25519 AAAA k"],
    }
    assert requests.get(f"{url}/v1/metadata/52:54:00:99:99:99", timeout=5).status_code == 404


def test_changes_need_the_token_and_the_token_is_never_logged(
    served: tuple[str, ServeState, Path], caplog: pytest.LogCaptureFixture
) -> None:
    url, _, _ = served
    caplog.set_level(logging.DEBUG, logger="provision.serve")
    assert requests.post(f"{url}/v1/reload", timeout=5).status_code == 401
    assert (
        requests.post(
            f"{url}/v1/reload", headers={"Authorization": "Bearer wrong"}, timeout=5
        ).status_code
        == 401
    )
    ok = requests.post(f"{url}/v1/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert ok.status_code == 200 and ok.json() == {"reloaded": True}
    assert TOKEN not in caplog.text
    machines = requests.get(f"{url}/v1/machines", timeout=5).json()
    assert [m["name"] for m in machines] == ["node-1", "node-2", "node-3"]
    assert machines[1]["macs"] == ["52:54:00:00:00:02"]


def test_the_lab_reloads_on_change_and_a_broken_edit_keeps_the_old_one(
    served: tuple[str, ServeState, Path],
) -> None:
    url, _, lab_file = served
    lab_file.write_text(
        LAB.replace(
            'profile: web, selector: {mac: "52:54:00:00:00:01"}',
            'profile: rack, selector: {mac: "52:54:00:00:00:01"}',
        )
    )
    deadline = time.monotonic() + 5
    while (
        "initrd" in requests.get(f"{url}/ipxe", params={"mac": "52:54:00:00:00:01"}, timeout=5).text
    ):
        assert time.monotonic() < deadline, "the lab was not reloaded"
        time.sleep(0.2)
    lab_file.write_text("profiles: [broken\n")
    time.sleep(2.5)
    assert (
        "kernel" in requests.get(f"{url}/ipxe", params={"mac": "52:54:00:00:00:01"}, timeout=5).text
    )


def test_lab_problems_are_all_located() -> None:
    bad = """\
profiles:
  web: {kernel: ../etc/passwd, initrd: [/abs], colour: red}
groups:
  - {name: g, profile: wbe, selector: {mac: "nope"}}
  - {name: g, profile: web}
machines:
  - {name: m, macs: ["52:54:00:00:00:01"], bmc: {driver: ilo, address: x, password: hunter2}}
  - {name: n, macs: ["52:54:00:00:00:01"]}
default: nothing
"""
    with pytest.raises(SpecError) as caught:
        parse_lab(bad, "lab.yml")
    text = [str(p) for p in caught.value.problems]
    expected = [
        "lab.yml:2:17: profiles.web.kernel: must be a path under the served root",
        "lab.yml:2:41: profiles.web.initrd[0]: must be a path under the served root",
        "lab.yml:2:48: profiles.web.colour: unknown key",
        "lab.yml:4:24: groups[0].profile: no profile 'wbe' (did you mean 'web'?)",
        "lab.yml:4:45: groups[0].selector.mac: must be a MAC address",
        "lab.yml:5:12: groups[1].name: group 'g' is declared twice",
        "lab.yml:7:58: machines[0].bmc.driver: must be redfish or ipmi",
        "lab.yml:7:75: machines[0].bmc.password: unknown key",
        "lab.yml:8:22: machines[1].macs[0]: 52:54:00:00:00:01 is already machine 'm''s",
        "lab.yml:9:10: default: must be exit or a profile name",
    ]
    for want in expected:
        assert any(t.startswith(want) for t in text), (want, text)
    assert "hunter2" not in caught.value.message


def test_the_metal_examples_load() -> None:
    from provision.providers.metal.lab import load_lab
    from provision.reconcile.spec import load_cluster_spec

    examples = Path(__file__).resolve().parents[2] / "examples"
    lab = load_lab(examples / "metal-lab.yml")
    assert [m.name for m in lab.machines] == ["node-1", "node-2"] and lab.default == "exit"
    spec = load_cluster_spec(examples / "metal-cluster.yml")
    assert spec.providers["lab"].type == "metal" and spec.groups[0].properties["selector"] == {
        "rack": "a"
    }
