"""``provision serve``'s HTTP/1.1 layer (providers/metal/http11.py) on raw sockets: what the
parser refuses (and that the connection is then closed), keep-alive, pipelined requests answered
in order (a file among them), time-outs, and that a slow client or a long download holds only
its own connection. Then BootAnswers: the indexed group choice agrees with the plain scan, and
cached answers follow the reservations file and a reload."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from provision.providers.metal.boot import (
    BootAnswers,
    Facts,
    GroupIndex,
    answer_ipxe,
    select_group,
)
from provision.providers.metal.http11 import HttpService, Limits
from provision.providers.metal.lab import Group, Lab, Profile, parse_lab
from provision.providers.metal.reservations import Reservation, locked_reservations
from provision.providers.metal.server import BootRoutes, ServeState, start_http

TOKEN = "TOKEN-HTTP11-3f9a"
LAB = """\
profiles:
  web: {kernel: web-kernel, initrd: [web-initrd.img], cmdline: console=ttyS0}
  other: {kernel: web-kernel}
groups:
  - {name: web, profile: web, selector: {rack: a}, metadata: {hostname: web}}
default: exit
machines:
  - {name: node-1, macs: ["52:54:00:00:00:01"], labels: {rack: a}}
  - {name: node-2, macs: ["52:54:00:00:00:02"], labels: {rack: a}}
"""
KERNEL = bytes(range(256)) * 4096 * 4  # 4 MiB: more than the socket buffers hold


@pytest.fixture
def state(tmp_path: Path) -> ServeState:
    root = tmp_path / "root"
    root.mkdir()
    (root / "web-kernel").write_bytes(KERNEL)
    (root / "web-initrd.img").write_bytes(b"initrd")
    lab_file = tmp_path / "lab.yml"
    lab_file.write_text(LAB)
    return ServeState(parse_lab(LAB, str(lab_file)), root, lab_file, TOKEN)


@pytest.fixture
def server(state: ServeState) -> Iterator[HttpService]:
    service = HttpService(
        BootRoutes(state), limits=Limits(head_timeout=1.0, idle_timeout=3.0, body=1024)
    )
    try:
        yield service
    finally:
        service.shutdown()


def connect(server: HttpService) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=5)


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock`` (what follows it stays in ``buffer``)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "closed inside a body"
        body += chunk
    buffer[:] = body[length:]
    return status, headers, bytes(body[:length])


def closed_after(sock: socket.socket) -> bool:
    """The server closed the connection (EOF once what it sent is read)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def refused_with(server: HttpService, data: bytes) -> int:
    with connect(server) as sock:
        sock.sendall(data)
        status, headers, _ = read_response(sock, bytearray())
        assert headers.get("connection") == "close"
        assert closed_after(sock)
        return status


@pytest.mark.parametrize(
    "data",
    [
        b"GET /boot.ipxe HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n",  # not origin-form
        b"GET http://x/boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET  /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"G(T /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /boot\xe9.ipxe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /boot.ipxe HTTP/1.1\nHost: x\r\n\r\n",  # a bare LF
        b"GET /boot.ipxe HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",  # a bare CR
        b"GET /boot.ipxe HTTP/1.1\r\nHost : x\r\n\r\n",  # space before the colon
        b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
        b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"GET /boot.ipxe HTTP/1.1\r\nX-A: 1\r\n\r\n",  # no Host
        b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello
    ],
)
def test_malformed_requests_get_400_and_are_closed(server: HttpService, data: bytes) -> None:
    assert refused_with(server, data) == 400


def test_oversized_or_too_many_header_fields_and_long_lines_are_refused(
    server: HttpService,
) -> None:
    big = b"X-Big: " + b"a" * 40000 + b"\r\n"
    assert refused_with(server, b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n") == 431
    # refused before the head ends: the server does not wait for (or buffer) more
    assert refused_with(server, b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n" + big) == 431
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(65))
    assert refused_with(server, b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n") == 431
    sixty_three = b"".join(b"X-%d: 1\r\n" % i for i in range(63))
    with connect(server) as sock:  # 64 fields is the limit, not over it
        sock.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n" + sixty_three + b"\r\n")
        assert read_response(sock, bytearray())[0] == 200
    assert refused_with(server, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n") == 414
    assert refused_with(server, b"GET /" + b"a" * 9000) == 414  # no line end yet
    assert refused_with(server, b"GET /boot.ipxe HTTP/2.0\r\nHost: x\r\n\r\n") == 505
    body = b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n"
    assert refused_with(server, body) == 413  # the body limit of this server: 1024


def test_requests_before_a_refused_one_are_answered_first(server: HttpService) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\nBROKEN\r\n\r\n")
        buffer = bytearray()
        assert read_response(sock, buffer)[0] == 200
        assert read_response(sock, buffer)[0] == 400
        assert closed_after(sock)


def test_pipelined_requests_are_answered_in_order_a_file_among_them(server: HttpService) -> None:
    host = b"Host: boot.lab:8080\r\n"
    with connect(server) as sock:
        sock.sendall(
            b"GET /ipxe?mac=52:54:00:00:00:01 HTTP/1.1\r\n" + host + b"\r\n"
            b"GET /files/web-kernel HTTP/1.1\r\n" + host + b"\r\n"
            b"GET /v1/metadata/52:54:00:00:00:02 HTTP/1.1\r\n" + host + b"\r\n"
            b"GET /files/web-kernel HTTP/1.1\r\n" + host + b"Range: bytes=10-19\r\n\r\n"
            b"HEAD /boot.ipxe HTTP/1.1\r\n" + host + b"\r\n"
            b"GET /nowhere HTTP/1.1\r\n" + host + b"\r\n"
            b"POST /v1/reload HTTP/1.1\r\n" + host + b"Content-Length: 4\r\n\r\nnone"
            b"GET /boot.ipxe HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n"
        )
        buffer = bytearray()
        status, _, body = read_response(sock, buffer)
        assert status == 200 and b"kernel http://boot.lab:8080/files/web-kernel" in body
        assert read_response(sock, buffer)[::2] == (200, KERNEL)
        status, _, body = read_response(sock, buffer)
        assert json.loads(body) == {"group": "web", "machine": "node-2", "hostname": "web"}
        status, headers, body = read_response(sock, buffer)
        assert (status, body) == (206, KERNEL[10:20])
        status, headers, body = read_head(sock, buffer)
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        assert read_response(sock, buffer)[0] == 404
        assert read_response(sock, buffer)[0] == 401  # no token
        status, headers, body = read_response(sock, buffer)
        assert status == 200 and body.startswith(b"#!ipxe") and headers["connection"] == "close"
        assert closed_after(sock)


def read_head(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """A response to HEAD: a Content-Length but no body."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    raw, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    lines = raw.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, b""


def test_a_client_streaming_requests_split_across_reads_is_not_timed_out(
    server: HttpService,
) -> None:
    """The head time-out (1 s here) runs from the first byte of each request: a client whose
    every send ends inside the next request, for longer than that, is still answered."""
    request = b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n"
    half = len(request) // 2
    with connect(server) as sock:
        buffer = bytearray()
        sock.sendall(request[:half])
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < 2.5:
            sock.sendall(request[half:] + request[:half])
            assert read_response(sock, buffer)[0] == 200
            answered += 1
            time.sleep(0.1)
        sock.sendall(request[half:])
        assert read_response(sock, buffer)[0] == 200 and answered > 10


@pytest.mark.slow
def test_a_client_that_pipelines_thousands_without_reading_is_paused_then_answered(
    server: HttpService,
) -> None:
    """Far more requests in flight than the socket buffers hold answers for: the server stops
    reading the connection (what it holds stays bounded: the requests of one read) while the
    answers are not read, and answers every one in order once they are."""
    count = 100_000  # about 20 MB of answers
    requests_bytes = b"".join(
        b"GET /v1/metadata/52:54:00:00:00:%02d HTTP/1.1\r\nHost: x\r\n\r\n" % (1 + n % 2)
        for n in range(count)
    )
    with connect(server) as sock:
        sock.settimeout(30)
        sender = threading.Thread(target=sock.sendall, args=(requests_bytes,), daemon=True)
        sender.start()
        deadline = time.monotonic() + 20
        while not server.connections:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (connection,) = list(server.connections)
        while connection.reading:
            assert time.monotonic() < deadline, "the server kept reading"
            time.sleep(0.05)
        assert len(connection.pending) < 5000  # at most one read's worth (256 KiB) waits
        buffer = bytearray()
        machines = [json.loads(read_response(sock, buffer)[2])["machine"] for _ in range(count)]
        sender.join(timeout=10)
        assert machines == ["node-1", "node-2"] * (count // 2)


def test_keep_alive_http_1_0_and_connection_close(server: HttpService) -> None:
    with connect(server) as sock:
        buffer = bytearray()
        for mac in ("01", "02", "01"):
            sock.sendall(
                f"GET /v1/metadata/52:54:00:00:00:{mac} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            status, headers, _ = read_response(sock, buffer)
            assert status == 200 and "connection" not in headers  # kept open
    with connect(server) as sock:
        sock.sendall(b"GET /boot.ipxe HTTP/1.0\r\n\r\n")
        status, headers, _ = read_response(sock, bytearray())
        assert status == 200 and headers["connection"] == "close" and closed_after(sock)
    with connect(server) as sock:
        sock.sendall(b"GET /boot.ipxe HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        buffer = bytearray()
        assert read_response(sock, buffer)[1]["connection"] == "keep-alive"
        sock.sendall(b"GET /boot.ipxe HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert read_response(sock, buffer)[0] == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /files/web-kernel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /files/web-kernel HTTP/1.0\r\n\r\n",  # busybox wget's, curl --http1.0
    ],
)
def test_a_download_that_closes_the_connection_is_sent_whole_then_closed(
    server: HttpService, request_bytes: bytes
) -> None:
    with connect(server) as sock:
        sock.sendall(request_bytes)
        status, headers, body = read_response(sock, bytearray())
        assert (status, headers["connection"], body) == (200, "close", KERNEL)
        assert closed_after(sock)


def test_a_slow_client_does_not_delay_another_and_is_timed_out(server: HttpService) -> None:
    slow = connect(server)
    slow.sendall(b"GET /ipxe?mac=52:54:00:00:00:01 HTTP/1.1\r\nHo")  # half a request
    started = time.monotonic()
    with connect(server) as other:
        other.sendall(b"GET /v1/metadata/52:54:00:00:00:02 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(other, bytearray())[0] == 200
    assert time.monotonic() - started < 0.5
    slow.sendall(b"st: x\r\n\r\n")  # the rest, within the head time-out: answered
    assert read_response(slow, bytearray())[0] == 200
    slow.sendall(b"GET /boot.ipxe HTTP/1.1\r\n")  # a head that never ends: closed after 1 s
    started = time.monotonic()
    assert closed_after(slow) and 0.9 < time.monotonic() - started < 4
    slow.close()
    with connect(server) as idle:  # an idle keep-alive connection: closed after 3 s
        started = time.monotonic()
        assert closed_after(idle) and 2.5 < time.monotonic() - started < 6


def test_a_download_held_by_a_reader_that_does_not_read_does_not_delay_others(
    server: HttpService, state: ServeState
) -> None:
    big = bytes(range(256)) * 4096 * 32  # 32 MiB: far more than the socket buffers hold
    (state.root / "big").write_bytes(big)
    stalled = connect(server)
    stalled.sendall(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.monotonic() + 5
    while not any(c.busy for c in list(server.connections)):  # its sendfile waits for room
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    started = time.monotonic()
    for _ in range(3):
        assert requests.get(f"http://127.0.0.1:{server.server_address[1]}/boot.ipxe", timeout=5).ok
    assert time.monotonic() - started < 1
    assert any(c.busy for c in list(server.connections))  # still sending: nobody read it
    assert read_response(stalled, bytearray())[2] == big  # and the download completes
    stalled.close()


def test_a_download_not_taken_at_the_minimum_rate_is_cut_off(state: ServeState) -> None:
    (state.root / "big").write_bytes(bytes(32 << 20))  # more than the socket buffers hold
    service = HttpService(BootRoutes(state), limits=Limits(send_rate=1 << 30, send_grace=1.0))
    try:
        with connect(service) as stalled:
            stalled.sendall(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(2.5)  # not read: the send times out after about a second
            assert not service.connections
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := stalled.recv(1 << 20):
                    received += len(chunk)
            assert received < 32 << 20  # cut short, not completed
    finally:
        service.shutdown()


def test_a_reload_keeps_open_connections_and_they_see_the_new_lab(
    server: HttpService, state: ServeState
) -> None:
    assert state.lab_file is not None
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with connect(server) as kept:
        buffer = bytearray()
        ask = b"GET /ipxe?mac=52:54:00:00:00:01 HTTP/1.1\r\nHost: x\r\n\r\n"
        kept.sendall(ask)
        assert b"initrd" in read_response(kept, buffer)[2]
        state.lab_file.write_text(LAB.replace("profile: web,", "profile: other,"))
        reloaded = requests.post(
            f"{url}/v1/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert reloaded.json() == {"reloaded": True}
        kept.sendall(ask)
        status, _, body = read_response(kept, buffer)
        assert status == 200 and b"kernel http://x/files/web-kernel" in body
        assert b"initrd" not in body  # the other profile, from the cache of the new lab


def test_start_http_refuses_an_address_in_use(state: ServeState) -> None:
    service, stop = start_http(state)
    try:
        with pytest.raises(OSError):
            start_http(state, port=service.server_address[1])
    finally:
        stop()


def test_serve_in_the_foreground_stops_on_sigterm_with_connections_open(tmp_path: Path) -> None:
    """``provision serve`` exits 0 soon after SIGTERM, an idle keep-alive connection and a
    half-sent request open."""
    (tmp_path / "lab.yml").write_text(LAB)
    serve = subprocess.Popen(
        [sys.executable, "-m", "provision", "serve", "--lab", str(tmp_path / "lab.yml")]
        + ["--root", str(tmp_path), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        line = serve.stderr.readline()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        idle.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(idle, bytearray())[0] == 200
        half = socket.create_connection(("127.0.0.1", port), timeout=5)
        half.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHo")
        time.sleep(0.2)
        started = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=10) == 0 and time.monotonic() - started < 5
        assert "Traceback" not in serve.stderr.read()
        idle.close()
        half.close()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_answers_follow_the_reservations_file(tmp_path: Path, state: ServeState) -> None:
    metal = tmp_path / "metal"
    answers = BootAnswers(state.lab, metal)
    script, answer, _ = answers.ipxe("mac=52:54:00:00:00:01", "http://x")
    assert answer == "group web"
    digest = "sha256:" + "ab" * 32
    with locked_reservations(metal) as reservations:
        reservations["node-1"] = Reservation(
            "k", "node-1", digest, "web-0", {"provision-cluster": "c"}
        )
    script, answer, _ = answers.ipxe("mac=52:54:00:00:00:01", "http://x")
    assert "not published" in script.decode()  # and not cached: publishing it is seen
    image_dir = metal / "images" / ("ab" * 32)
    image_dir.mkdir(parents=True)
    (image_dir / "image.json").write_text(
        json.dumps({"digest": digest, "kernel": "k", "initrd": ["i"], "cmdline": "quiet"})
    )
    script, answer, _ = answers.ipxe("mac=52:54:00:00:00:01", "http://x")
    assert "provision.hostname=web-0" in script.decode() and answer.startswith("reservation node-1")
    assert json.loads(answers.metadata("52:54:00:00:00:01")[1])["hostname"] == "web-0"
    uncached, uncached_answer = answer_ipxe(
        state.lab, {"mac": "52:54:00:00:00:01"}, "http://x", metal
    )
    assert answers.ipxe("mac=52:54:00:00:00:01", "http://x")[:2] == (
        uncached.encode(),
        uncached_answer,
    )  # the cached answer is the uncached one
    with locked_reservations(metal) as reservations:  # being wiped: the wipe profile boots
        reservations["node-1"] = dataclasses.replace(reservations["node-1"], wiping="other")
    assert answers.ipxe("mac=52:54:00:00:00:01", "http://x")[1] == "wipe node-1 (other)"
    with locked_reservations(metal) as reservations:  # released: the lab's own group again
        reservations["node-1"] = dataclasses.replace(
            reservations["node-1"], wiping="", released=True
        )
    assert answers.ipxe("mac=52:54:00:00:00:01", "http://x")[1] == "group web"
    assert json.loads(answers.metadata("52:54:00:00:00:01")[1])["group"] == "web"
    with locked_reservations(metal) as reservations:
        del reservations["node-1"]
    assert answers.ipxe("mac=52:54:00:00:00:01", "http://x")[1] == "group web"
    assert json.loads(answers.metadata("52:54:00:00:00:01")[1])["group"] == "web"


def test_the_caches_stay_bounded(state: ServeState) -> None:
    answers = BootAnswers(state.lab, max_cached=10)
    for n in range(100):
        answers.ipxe(f"mac=52:54:00:00:00:01&uuid={n}", "http://x")
        answers.metadata(f"52:54:00:00:01:{n:02x}")
    assert len(answers._scripts) <= 10 and len(answers._metadata) <= 10


_VALUES = st.sampled_from(["a", "b", "c"])
_KEYS = st.sampled_from(["mac", "uuid", "rack", "row"])


@settings(max_examples=300, deadline=None)
@given(
    selectors=st.lists(st.dictionaries(_KEYS, _VALUES, max_size=3), max_size=8),
    facts=st.dictionaries(_KEYS, _VALUES, max_size=4),
)
def test_the_group_index_chooses_as_the_plain_scan(
    selectors: list[dict[str, str]], facts: dict[str, str]
) -> None:
    groups = tuple(Group(f"g{i % 3}{i}", "p", s) for i, s in enumerate(selectors))
    lab = Lab({"p": Profile("p", "k", ())}, groups, (), "exit")
    assert GroupIndex(groups).select(Facts(facts)) == select_group(lab, Facts(facts))
