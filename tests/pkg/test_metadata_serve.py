"""The metadata component's own program (pkg/metadata/files/metadata), run on this host with
exactly the busybox applets its recipe links, against a real ``provision serve`` (its
ServeState and HTTP server on 127.0.0.1): the machine's kernel command line is the one serve's
boot answer gives it (``provision.metadata=URL``), and the program writes the lab group's user
data, hostname and SSH keys, or a reserved machine's hostname, image digest and its cluster
group's user data and keys, into /run/config. Hostile user data is refused as from every source: names with ``..`` or ``/``
are dropped, a document over the size limit or not JSON writes nothing."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml
from aws.imds_standin import Imds, serve_imds
from pkg_testkit import run_metadata_program

from provision.providers.metal.lab import parse_lab
from provision.providers.metal.reservations import Reservation, locked_reservations
from provision.providers.metal.server import ServeState, start_http

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMetalAlice alice@laptop"
OTHER = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQMetalBob bob"
TREE = {
    "web": {"entries": {"index.html": {"content": "<h1>metal</h1>\n", "perm": "0644"}}},
    "..": {"content": "escaped"},  # dropped: would land beside /run/config
    "ok": {"entries": {"..": {"entries": {"evil": {"content": "up"}}}}},  # dropped below ok/
}
DIGEST = "sha256:" + "ab" * 32
LAB = {
    "profiles": {"web": {"kernel": "img/kernel", "initrd": ["img/initrd.img"], "cmdline": "console=ttyS0"}},
    "groups": [
        {
            "name": "web",
            "profile": "web",
            "selector": {"mac": "52:54:00:00:00:01"},
            "metadata": {"hostname": "web-1", "userData": json.dumps(TREE), "sshKeys": [KEY]},
        },
        {"name": "plain", "profile": "web", "selector": {"mac": "52:54:00:00:00:02"},
         "metadata": {"userData": "#!/bin/sh\necho plain user data\n", "sshKeys": [OTHER]}},
        {"name": "bare", "profile": "web", "selector": {"mac": "52:54:00:00:00:05"}},
    ],
    "machines": [
        {"name": f"node-{i}", "macs": [f"52:54:00:00:00:0{i}"]} for i in range(1, 6)
    ],
}  # fmt: skip


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A provision serve on 127.0.0.1 for LAB, its state holding a reservation of node-4."""
    state_dir = tmp_path / "state"
    image = state_dir / "images" / DIGEST.split(":")[1]
    image.mkdir(parents=True)
    info = {
        "digest": DIGEST,
        "kernel": f"{image.name}/k",
        "initrd": [f"{image.name}/i"],
        "cmdline": "console=ttyS0",
    }
    (image / "image.json").write_text(json.dumps(info))
    tags = {"provision-cluster": "shop"}
    with locked_reservations(state_dir) as reservations:
        reservations["node-4"] = Reservation(
            "key-1", "node-4", DIGEST, "shop-web-00001", tags, 1.0,
            user_data=json.dumps({"shop": {"content": "cluster data\n"}}), ssh_keys=(OTHER,),
        )  # fmt: skip
    lab = parse_lab(yaml.safe_dump(LAB), str(tmp_path / "lab.yml"))
    server, stop = start_http(ServeState(lab, state_dir / "images", state_dir=state_dir))
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state_dir
    finally:
        stop()


def boot_cmdline(url: str, mac: str) -> str:
    """The kernel command line serve's boot answer gives the machine with ``mac``."""
    script = requests.get(f"{url}/ipxe", params={"mac": mac, "platform": "pcbios"}, timeout=5).text
    kernel = next(line for line in script.splitlines() if line.startswith("kernel "))
    return kernel.split(" ", 2)[2]


def run_booted(url: str, mac: str, applets: Path, tmp_path: Path, **env: str) -> tuple[str, Path]:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(boot_cmdline(url, mac) + "\n")
    settings = {"METADATA_SOURCES": "serve", "METADATA_CMDLINE": str(cmdline), **env}
    return run_metadata_program(applets, tmp_path, settings)


def test_the_boot_answer_names_the_metadata_url_for_machines_that_have_metadata(
    serve: tuple[str, Path],
) -> None:
    url, _ = serve
    assert f"provision.metadata={url}/v1/metadata/52:54:00:00:00:01" in boot_cmdline(
        url, "52-54-00-00-00-01"
    )
    assert boot_cmdline(url, "52:54:00:00:00:04").endswith(
        f"provision.hostname=shop-web-00001 provision.metadata={url}/v1/metadata/52:54:00:00:00:04"
    )  # a reserved machine: its hostname and image
    assert "provision.metadata" not in boot_cmdline(
        url, "52:54:00:00:00:05"
    )  # a group without metadata


def test_a_groups_user_data_hostname_and_keys_arrive_from_serve(
    serve: tuple[str, Path], applets: Path, tmp_path: Path
) -> None:
    url, _ = serve
    out, config = run_booted(url, "52:54:00:00:00:01", applets, tmp_path)
    assert f"read metadata from provision serve ({url}/v1/metadata/52:54:00:00:00:01)" in out
    assert (config / "web" / "index.html").read_text() == "<h1>metal</h1>\n"
    assert (config / "hostname").read_text() == "web-1\n" and "hostname-now: web-1" in out
    keys = config / "ssh" / "authorized_keys"
    assert keys.read_text().splitlines() == [KEY]
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    written = sorted(str(p.relative_to(config)) for p in config.rglob("*") if p.is_file())
    assert written == ["hostname", "ssh/authorized_keys", "web/index.html"]  # nothing of ".."
    assert list((config / "ok").iterdir()) == []  # ok/ itself is fine, its ".." is dropped
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bin",
        "cmdline",
        "config",
        "state",
        "work",
    ]
    assert not (config / "provision").exists()  # a lab group's machine: no image named


def test_plain_user_data_goes_to_userdata(
    serve: tuple[str, Path], applets: Path, tmp_path: Path
) -> None:
    url, _ = serve
    out, config = run_booted(url, "52:54:00:00:00:02", applets, tmp_path)
    assert (config / "userdata").read_text() == "#!/bin/sh\necho plain user data\n"
    assert (config / "ssh" / "authorized_keys").read_text().splitlines() == [OTHER]
    assert not (config / "hostname").exists()


def test_a_reserved_machine_gets_its_name_image_digest_and_groups_user_data(
    serve: tuple[str, Path], applets: Path, tmp_path: Path
) -> None:
    url, _ = serve
    out, config = run_booted(url, "52:54:00:00:00:04", applets, tmp_path)
    assert (config / "hostname").read_text() == "shop-web-00001\n"
    assert "hostname-now: shop-web-00001" in out
    assert (config / "provision" / "image").read_text() == DIGEST + "\n"
    assert (config / "shop").read_text() == "cluster data\n"  # its cluster group's userData
    assert (config / "ssh" / "authorized_keys").read_text().splitlines() == [OTHER]


def test_a_document_over_the_limit_writes_nothing(
    serve: tuple[str, Path], applets: Path, tmp_path: Path
) -> None:
    """The lab refuses user data over 64 KiB; the component, whatever the server sends, reads
    at most METADATA_MAX_BYTES (256 KiB unless told) and refuses a longer document whole."""
    url, _ = serve
    out, config = run_booted(url, "52:54:00:00:00:01", applets, tmp_path, METADATA_MAX_BYTES="200")
    assert re.search(r"provision.metadata: refused: more than 200 bytes from http://\S+", out)
    assert "no user data found" in out
    assert list(config.iterdir()) == []


def run_with_cmdline(
    cmdline: str, applets: Path, tmp_path: Path, end: str = "\n"
) -> tuple[str, Path]:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "cmdline").write_text(cmdline + end)
    env = {"METADATA_SOURCES": "serve", "METADATA_CMDLINE": str(tmp_path / "cmdline")}
    return run_metadata_program(applets, tmp_path, env)


@pytest.fixture
def garbage() -> Iterator[str]:
    """An HTTP server whose /v1/metadata/ answers are not metadata objects."""
    forced = json.dumps(
        {"hostname": "evil\nname", "sshKeys": [f'command="reboot" {KEY}\nssh-rsa AAAA x', 7, OTHER],
         "image": "sha256:x\ny", "userData": 12}
    ).encode()  # fmt: skip
    bodies = {
        "/v1/metadata/truncated": b'{"hostname": "x", "userData": "',
        "/v1/metadata/list": b'["hostname"]',
        "/v1/metadata/forced": forced,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = bodies.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("cmdline", "said"),
    [
        (
            "provision.metadata=https://10.0.0.1/v1/metadata/52:54:00:00:00:01",
            "not http://SERVER/v1/metadata/MAC",
        ),
        ("provision.metadata=http://10.0.0.1/files/x", "not http://SERVER/v1/metadata/MAC"),
        ("provision.metadata=http://10.0.0.1/v1/metadata/a;reboot", "not a URL this reads"),
        ("provision.metadata=http://10.0.0.1/v1/metadata/$(reboot)", "not a URL this reads"),
    ],
)
def test_a_command_line_url_of_another_kind_is_ignored(
    cmdline: str, said: str, applets: Path, tmp_path: Path
) -> None:
    out, config = run_with_cmdline(f"console=ttyS0 {cmdline} quiet", applets, tmp_path)
    assert said in out and "no user data found" in out
    assert list(config.iterdir()) == []


def test_what_is_not_a_metadata_object_or_not_there_writes_nothing(
    serve: tuple[str, Path], garbage: str, applets: Path, tmp_path: Path
) -> None:
    url, _ = serve
    for name, cmdline, said in [
        ("unknown", f"{url}/v1/metadata/52:54:00:99:99:99", "nothing from"),  # serve's 404
        ("truncated", f"{garbage}/v1/metadata/truncated", "refused: not a metadata object"),
        ("list", f"{garbage}/v1/metadata/list", "refused: not a metadata object"),
    ]:
        out, config = run_with_cmdline(f"provision.metadata={cmdline}", applets, tmp_path / name)
        assert f"provision.metadata: {said}" in out, name
        assert list(config.iterdir()) == [], name


def test_values_with_line_breaks_are_dropped(garbage: str, applets: Path, tmp_path: Path) -> None:
    """A server (not provision serve: its lab refuses them) whose keys, hostname and image hold
    line breaks, which would add lines to authorized_keys: only the clean key lands."""
    out, config = run_with_cmdline(
        f"provision.metadata={garbage}/v1/metadata/forced", applets, tmp_path
    )
    assert "read metadata from provision serve" in out
    assert (config / "ssh" / "authorized_keys").read_text().splitlines() == [OTHER]
    assert sorted(str(p.relative_to(config)) for p in config.rglob("*")) == [
        "ssh",
        "ssh/authorized_keys",
    ]


def test_a_command_line_without_its_newline_is_read(
    serve: tuple[str, Path], applets: Path, tmp_path: Path
) -> None:
    url, _ = serve
    _out, config = run_with_cmdline(
        boot_cmdline(url, "52:54:00:00:00:02"), applets, tmp_path, end=""
    )
    assert (config / "userdata").read_text() == "#!/bin/sh\necho plain user data\n"


def test_serve_is_asked_before_the_cloud_service_and_only_when_named(
    serve: tuple[str, Path], applets: Path, tmp_path: Path
) -> None:
    url, _ = serve
    imds = Imds(files={"user-data": b"from the cloud", "meta-data/hostname": b"cloudy"})
    server = serve_imds(imds)
    imds_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for name, cmdline, userdata in [
            ("named", boot_cmdline(url, "52:54:00:00:00:02"), "#!/bin/sh\necho plain user data\n"),
            ("not-named", "console=ttyS0 provision.hostname=x", "from the cloud"),
        ]:
            work = tmp_path / name
            work.mkdir()
            (work / "cmdline").write_text(cmdline + "\n")
            env = {"METADATA_SOURCES": "serve cloud", "METADATA_CMDLINE": str(work / "cmdline"),
                   "METADATA_URL": imds_url}  # fmt: skip
            _out, config = run_metadata_program(applets, work, env)
            assert (config / "userdata").read_text() == userdata, name
    finally:
        server.shutdown()
        server.server_close()
