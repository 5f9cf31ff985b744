"""The one retry policy (provision.retry) against a real HTTP server on 127.0.0.1 that answers
429/503 with Retry-After (seconds and HTTP-date); time is a fake clock, so nothing waits."""

from __future__ import annotations

import email.utils
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from provision.clock import FakeClock
from provision.reconcile.throttle import Backoff
from provision.retry import RetryLater, RetryPolicy, parse_retry_after

START = 1_700_000_000.0


class ScriptedServer:
    """Answers each request with the next scripted (status, headers), then 200 "ok"."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str]]] = []
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests += 1
                status, headers = server.script.pop(0) if server.script else (200, {})
                body = b"ok" if status == 200 else b"busy"
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def get(url: str, clock: FakeClock) -> str:
    """One attempt: a 429/503 becomes RetryLater with the server's Retry-After."""
    response = requests.get(url, timeout=5)
    if response.status_code in (429, 503):
        raise RetryLater(
            f"HTTP {response.status_code}",
            parse_retry_after(response.headers.get("Retry-After"), clock.now()),
        )
    return response.text


def test_retry_after_in_seconds_and_as_http_date(server: ScriptedServer) -> None:
    clock = FakeClock(START)
    date = email.utils.formatdate(START + 3 + 7, usegmt=True)  # 7 s after the first wait
    server.script = [(429, {"Retry-After": "3"}), (503, {"Retry-After": date})]
    policy = RetryPolicy(attempts=5, total=60, clock=clock)
    assert policy.call(lambda: get(server.url, clock)) == "ok"
    assert clock.sleeps == [3.0, 7.0]
    assert server.requests == 3


def test_attempts_are_bounded(server: ScriptedServer) -> None:
    clock = FakeClock(START)
    server.script = [(503, {"Retry-After": "1"})] * 10
    policy = RetryPolicy(attempts=4, total=60, clock=clock)
    with pytest.raises(RetryLater) as caught:
        policy.call(lambda: get(server.url, clock))
    assert server.requests == 4 and clock.sleeps == [1.0, 1.0, 1.0]
    assert caught.value.attempts == 4 and caught.value.gave_up == "after 4 attempts"


def test_total_time_is_bounded(server: ScriptedServer) -> None:
    clock = FakeClock(START)
    server.script = [(503, {"Retry-After": "20"})] * 10
    policy = RetryPolicy(attempts=10, total=50, clock=clock)
    with pytest.raises(RetryLater) as caught:
        policy.call(lambda: get(server.url, clock))
    # waits of 20 s and 20 s fit in 50 s, a third would end at 60 s: not started
    assert clock.sleeps == [20.0, 20.0] and server.requests == 3
    assert "would pass the 50 s limit" in caught.value.gave_up


def test_jittered_backoff_without_retry_after(server: ScriptedServer) -> None:
    clock = FakeClock(START)
    server.script = [(503, {})] * 4
    policy = RetryPolicy(
        attempts=6, total=600, initial=0.5, maximum=2.0, clock=clock, rng=random.Random(1)
    )
    assert policy.call(lambda: get(server.url, clock)) == "ok"
    ceilings = [0.5, 1.0, 2.0, 2.0]
    assert len(clock.sleeps) == 4
    assert all(0 <= s <= c for s, c in zip(clock.sleeps, ceilings, strict=True))
    assert len(set(clock.sleeps)) == 4  # jittered, not a fixed ladder


def test_other_errors_are_not_retried(server: ScriptedServer) -> None:
    clock = FakeClock(START)
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise ValueError("permanent")

    with pytest.raises(ValueError):
        RetryPolicy(clock=clock).call(attempt)
    assert calls == [1] and clock.sleeps == []


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", START) == 120.0
    assert parse_retry_after(email.utils.formatdate(START + 30, usegmt=True), START) == 30.0
    assert parse_retry_after(email.utils.formatdate(START - 30, usegmt=True), START) == 0.0
    assert parse_retry_after("soon", START) is None
    assert parse_retry_after("-5", START) is None
    assert parse_retry_after(None, START) is None


def test_engine_backoff_uses_the_policy_schedule() -> None:
    clock = FakeClock(START)
    backoff = Backoff(clock, initial=1.0, maximum=8.0)
    assert backoff.failed("web:create", retry_after=7.0) == 7.0
    assert not backoff.ready("web:create")
    clock.advance(7.0)
    assert backoff.ready("web:create")
    delays = [backoff.failed("web:list") for _ in range(6)]
    assert all(0 <= d <= min(8.0, 2.0**n) for n, d in enumerate(delays))
    assert backoff.attempts("web:list") == 6
