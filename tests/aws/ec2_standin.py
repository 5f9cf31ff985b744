"""moto as EC2 behaves where it matters to the aws provider, plus faults on demand.

moto's own server app runs behind one WSGI layer (in this test process, on 127.0.0.1), which
- makes ``RunInstances`` idempotent by ``ClientToken`` as EC2 documents it: a repeat of a
  token returns the first call's answer (no second instance); a repeat with other parameters is
  refused with ``IdempotentParameterMismatch``; moto itself ignores the token;
- injects faults per action (or ``*``: the next call of any action), in order: ``throttle`` (EC2's ``RequestLimitExceeded``, HTTP 503),
  ``throttling`` (``Throttling``, HTTP 400), ``503`` (``Unavailable``), ``slow`` (the request is
  carried out, then the answer is held back past the client's read time-out);
- records every action called, with its parameters (for the IAM policy test).
Nothing inside boto3 is touched: the clients talk HTTP to this server.
"""

from __future__ import annotations

import io
import os
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from aws.aws_testkit import Moto
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import WSGIRequestHandler, make_server

StartResponse = Callable[..., Any]
ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>"
)
FAULTS = {
    "throttle": ("503 Service Unavailable", "RequestLimitExceeded", "Request limit exceeded."),
    "throttling": ("400 Bad Request", "Throttling", "Rate exceeded"),
    "503": ("503 Service Unavailable", "Unavailable", "The server is overloaded."),
}


@dataclass
class Ec2Layer:
    """The WSGI layer in front of moto's app (see the module docstring)."""

    app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
    slow_seconds: float = 3.0
    faults: dict[str, deque[str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    received: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)  # (action, form)
    tokens: dict[str, tuple[str, str, list[tuple[str, str]], bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    run_lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, action: str, fault: str, times: int = 1) -> None:
        assert fault in (*FAULTS, "slow"), fault
        with self.lock:
            self.faults.setdefault(action, deque()).extend([fault] * times)

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.calls.clear()
            self.received.clear()
            self.tokens.clear()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/moto-api/reset":
            self.reset()
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        form = (
            urllib.parse.parse_qs(body.decode("latin-1"))
            if environ.get("REQUEST_METHOD") == "POST"
            else {}
        )
        action = (form.get("Action") or [""])[0]
        if not action:
            return self.app(environ, start_response)
        with self.lock:
            self.calls.append(action)
            self.received.append((action, form))
            queued = self.faults.get(action) or self.faults.get("*")
            fault = queued.popleft() if queued else None
        if fault in FAULTS:
            status, code, message = FAULTS[fault]
            text = ERROR.format(code=code, message=message, rid="standin-fault").encode()
            start_response(
                status, [("Content-Type", "text/xml"), ("Content-Length", str(len(text)))]
            )
            return [text]
        status, headers, answer = self._answer(environ, action, form)
        if fault == "slow":
            time.sleep(self.slow_seconds)  # the work is done; the client gives up before this ends
        start_response(status, headers)
        return [answer]

    def _answer(
        self, environ: dict[str, Any], action: str, form: dict[str, list[str]]
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        token = (form.get("ClientToken") or [""])[0]
        if action != "RunInstances" or not token:
            return self._call(environ)
        params = urllib.parse.urlencode(
            sorted((k, v) for k, vs in form.items() if k != "ClientToken" for v in vs)
        )
        with self.run_lock:  # one RunInstances at a time: a token is looked up and kept atomically
            seen = self.tokens.get(token)
            if seen is not None:
                first_params, status, headers, answer = seen
                if first_params != params:
                    text = ERROR.format(
                        code="IdempotentParameterMismatch",
                        rid="standin-token",
                        message=f"Client token {token} was used with other parameters.",
                    ).encode()
                    return (
                        "400 Bad Request",
                        [("Content-Type", "text/xml"), ("Content-Length", str(len(text)))],
                        text,
                    )
                return status, headers, answer
            status, headers, answer = self._call(environ)
            if status.startswith("200"):
                self.tokens[token] = (params, status, headers, answer)
            return status, headers, answer

    def _call(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        got: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            got["status"], got["headers"] = status, headers

        answer = b"".join(self.app(environ, start))
        return got["status"], list(got["headers"]), answer


@dataclass(frozen=True)
class Ec2Moto(Moto):
    layer: Ec2Layer

    def image(self) -> str:
        """An AMI moto knows (one of the public images it starts with)."""
        return str(self.client().describe_images(Owners=["amazon"])["Images"][0]["ImageId"])

    def client(self) -> Any:
        """An EC2 client of the test's own (not the provider's) with generous time-outs."""
        import boto3

        return boto3.client(
            "ec2",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="AKIDPROVISIONTEST",
            aws_secret_access_key="x",
        )

    def instances(self) -> list[dict[str, Any]]:
        """Every instance moto holds (any state), through the EC2 API."""
        return [
            i
            for page in self.client().get_paginator("describe_instances").paginate()
            for r in page["Reservations"]
            for i in r["Instances"]
        ]


class QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log on the test's output."""


def serve_ec2_moto() -> tuple[Ec2Moto, Callable[[], None]]:
    """moto behind the EC2 layer on 127.0.0.1, and how to stop it."""
    layer = Ec2Layer(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, layer, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join()

    return Ec2Moto(f"http://127.0.0.1:{server.server_address[1]}", layer), stop


@pytest.fixture(scope="session")
def ec2_moto_server() -> Iterator[Ec2Moto]:
    moto, stop = serve_ec2_moto()
    try:
        yield moto
    finally:
        stop()


@pytest.fixture
def ec2(ec2_moto_server: Ec2Moto, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ec2Moto]:
    """A clean moto behind the EC2 layer, and this process's environment pointing boto3 at it."""
    requests.post(f"{ec2_moto_server.url}/moto-api/reset", timeout=10).raise_for_status()
    for key, value in ec2_moto_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE",):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    yield ec2_moto_server
