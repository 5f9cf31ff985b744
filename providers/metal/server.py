"""``provision serve``'s HTTP side: boot scripts, files, metadata and a small JSON API.

Routes::

    GET  /boot.ipxe              the chain script: iPXE asks /ipxe with what it knows
    GET  /ipxe?mac=&uuid=&...    the machine's script (boot.answer_ipxe), the boot recorded
    GET  /files/PATH             a file under the served root (files.py: Range, ETag, sendfile)
    GET  /v1/metadata/MAC        the machine's metadata as JSON (hostname, userData, sshKeys)
    GET  /v1/machines | /v1/profiles | /v1/groups | /v1/boots   the lab and the recent boots
    POST /v1/reload              re-read the lab file now (Authorization: Bearer TOKEN)

The lab file is re-read when it changes (checked every second, in a thread of its own, and
swapped whole with its ``BootAnswers``: a request sees the old lab or the new one, connections
are never dropped); a lab that does not load keeps the previous one and the error is logged.
The API token is compared in constant time and never logged, nor is any request's
Authorization header.

The HTTP side is ``http11.HttpService``: one event loop for every connection (strict parsing,
keep-alive, files with sendfile). Scripts and metadata come from the lab generation's
``BootAnswers`` (indexed selection, rendered answers cached), so a boot storm costs a dict
look-up a request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

from provision.errors import ProvisionError
from provision.providers.metal.boot import CHAIN_SCRIPT, BootAnswers
from provision.providers.metal.files import parse_range, resolve_served
from provision.providers.metal.http11 import FileBody, HttpService, Request, Response
from provision.providers.metal.lab import Lab, load_lab

log = logging.getLogger("provision.serve")


class Boot(NamedTuple):
    at: float
    mac: str
    answer: str
    client: str


@dataclass
class ServeState:
    """What the handlers read: the lab (swapped whole on reload), the root, the recent boots."""

    lab: Lab
    root: Path
    lab_file: Path | None = None
    token: str | None = None
    state_dir: Path | None = (
        None  # the metal state (reservations, images) when clusters use this lab
    )
    boots: collections.deque[Boot] = field(default_factory=lambda: collections.deque(maxlen=1000))
    lab_mtime: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: BootAnswers = field(init=False)

    def __post_init__(self) -> None:
        self.answers = BootAnswers(self.lab, self.state_dir)

    def current_answers(self) -> BootAnswers:
        """The answers of the lab in place (rebuilt if ``lab`` was assigned directly)."""
        answers = self.answers
        if answers.lab is not self.lab:
            answers = self.answers = BootAnswers(self.lab, self.state_dir)
        return answers

    def reload(self) -> bool:
        """Re-read the lab file; True when a new lab is in place."""
        if self.lab_file is None:
            return False
        try:
            lab = load_lab(self.lab_file)
        except ProvisionError as exc:
            log.warning("lab %s not reloaded: %s", self.lab_file, exc.message.replace("\n", "; "))
            return False
        self.answers = BootAnswers(lab, self.state_dir)  # built first: the two swap together
        self.lab = lab
        log.info(
            "lab %s reloaded: %d groups, %d machines",
            self.lab_file,
            len(lab.groups),
            len(lab.machines),
        )
        return True

    def watch(self, stop: threading.Event, every: float = 1.0) -> None:
        """Reload when the lab file's mtime changes, until ``stop``."""
        while not stop.wait(every):
            try:
                mtime = self.lab_file.stat().st_mtime_ns if self.lab_file else 0
            except OSError:
                continue
            if mtime != self.lab_mtime:
                self.lab_mtime = mtime
                self.reload()

    def record(self, boot: Boot) -> None:
        with self.lock:
            self.boots.append(boot)


_JSON = "application/json"
_NOT_FOUND = Response(404, b"not found\n")


def _json(value: Any, status: int = 200) -> Response:
    return Response(status, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), _JSON)


class BootRoutes:
    """The routes of the module's text, answering ``http11`` requests from ``state``."""

    def __init__(self, state: ServeState) -> None:
        self.state = state

    def __call__(self, request: Request) -> Response | Awaitable[Response]:
        raw_path, _, query = request.target.partition("?")
        if request.method in ("GET", "HEAD"):
            return self.get(request, unquote(raw_path), query)
        if request.method == "POST":
            return self.post(request, raw_path)
        return Response(405, b"method not allowed\n", headers=(("Allow", "GET, HEAD, POST"),))

    def get(self, request: Request, path: str, query: str) -> Response:
        state = self.state
        if path == "/ipxe":
            script, answer, mac = state.current_answers().ipxe(query, self._base_url(request))
            state.record(Boot(time.time(), mac, answer, request.client))
            return Response(200, script)
        if path.startswith("/v1/metadata/"):
            status, body = state.current_answers().metadata(path.removeprefix("/v1/metadata/"))
            return Response(status, body, _JSON)
        if path.startswith("/files/"):
            return self.file(request, path.removeprefix("/files/"))
        if path == "/boot.ipxe":
            return Response(200, CHAIN_SCRIPT.encode())
        if path in ("/v1/machines", "/v1/profiles", "/v1/groups"):
            return Response(200, state.current_answers().listing(path.removeprefix("/v1/")), _JSON)
        if path == "/v1/boots":
            with state.lock:
                return _json([b._asdict() for b in state.boots])
        return _NOT_FOUND

    def post(self, request: Request, path: str) -> Response | Awaitable[Response]:
        if not self._authorized(request):
            return _json({"error": "a valid token is needed (Authorization: Bearer TOKEN)"}, 401)
        if path == "/v1/reload":
            return self._reload()
        return _json({"error": "not found"}, 404)

    async def _reload(self) -> Response:
        """Load the lab off the event loop (a large lab takes a while to parse): the other
        connections are answered meanwhile."""
        reloaded = await asyncio.get_running_loop().run_in_executor(None, self.state.reload)
        return _json({"reloaded": reloaded})

    def _authorized(self, request: Request) -> bool:
        token = self.state.token
        if not token:
            return False
        given = request.headers.get("authorization", "")
        return given.startswith("Bearer ") and hmac.compare_digest(
            given[7:].encode(), token.encode()
        )

    @staticmethod
    def _base_url(request: Request) -> str:
        return f"http://{request.headers.get('host') or request.local}"

    def file(self, request: Request, request_path: str) -> Response:
        served = resolve_served(self.state.root, request_path)
        if served is None:
            return _NOT_FOUND
        common: tuple[tuple[str, str], ...] = (
            ("ETag", served.etag),
            ("Accept-Ranges", "bytes"),
            ("Cache-Control", "no-cache"),
        )
        if request.headers.get("if-none-match") == served.etag:
            return Response(304, content_type=None, headers=common)
        wanted = parse_range(request.headers.get("range"), served.size)
        if wanted == "unsatisfiable":
            return Response(416, headers=(*common, ("Content-Range", f"bytes */{served.size}")))
        start, end = wanted if isinstance(wanted, tuple) else (0, served.size - 1)
        length = max(0, end - start + 1)
        headers = common
        if isinstance(wanted, tuple):
            headers = (*common, ("Content-Range", f"bytes {start}-{end}/{served.size}"))
        return Response(
            206 if isinstance(wanted, tuple) else 200,
            content_type="application/octet-stream",
            headers=headers,
            file=FileBody(served.path, start, length),
        )


def start_http(
    state: ServeState, host: str = "127.0.0.1", port: int = 0, stop: threading.Event | None = None
) -> tuple[HttpService, Callable[[], None]]:
    """Serve ``state`` from a background event loop; returns the server (``server_address``)
    and a function that stops it. Raises OSError when ``host:port`` cannot be listened on."""
    server = HttpService(BootRoutes(state), host, port)
    stop = stop or threading.Event()
    if state.lab_file is not None:
        with contextlib.suppress(OSError):
            state.lab_mtime = state.lab_file.stat().st_mtime_ns
        threading.Thread(target=state.watch, args=(stop,), daemon=True, name="lab-watch").start()

    def shutdown() -> None:
        stop.set()
        server.shutdown()

    return server, shutdown
