"""``provision serve``'s HTTP side: boot scripts, files, metadata and a small JSON API.

Routes::

    GET  /boot.ipxe              the chain script: iPXE asks /ipxe with what it knows
    GET  /ipxe?mac=&uuid=&...    the machine's script (boot.answer_ipxe), the boot recorded
    GET  /files/PATH             a file under the served root (files.py: Range, ETag, sendfile)
    GET  /v1/metadata/MAC        the machine's metadata as JSON (hostname, userData, sshKeys)
    GET  /v1/machines | /v1/profiles | /v1/groups | /v1/boots   the lab and the recent boots
    POST /v1/reload              re-read the lab file now (Authorization: Bearer TOKEN)

The lab file is re-read when it changes (checked every second, swapped whole: a request sees
the old lab or the new one, connections are never dropped); a lab that does not load keeps the
previous one and the error is logged. The API token is compared in constant time and never
logged, nor is any request's Authorization header.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from provision.errors import ProvisionError
from provision.providers.metal.boot import (
    CHAIN_SCRIPT,
    Facts,
    answer_ipxe,
    find_reservation,
    reservation_metadata,
    select_group,
)
from provision.providers.metal.files import parse_range, resolve_served, send_file_range
from provision.providers.metal.lab import Lab, load_lab, normalise_mac

log = logging.getLogger("provision.serve")


@dataclass(frozen=True)
class Boot:
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

    def reload(self) -> bool:
        """Re-read the lab file; True when a new lab is in place."""
        if self.lab_file is None:
            return False
        try:
            lab = load_lab(self.lab_file)
        except ProvisionError as exc:
            log.warning("lab %s not reloaded: %s", self.lab_file, exc.message.replace("\n", "; "))
            return False
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


def _handler(state: ServeState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "provision-serve"

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _base_url(self) -> str:
            host = self.headers.get("Host") or "{}:{}".format(*self.connection.getsockname()[:2])
            return f"http://{host}"

        def _send(
            self,
            code: int,
            body: bytes,
            content_type: str = "text/plain; charset=utf-8",
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, value: Any, code: int = 200) -> None:
            self._send(
                code,
                (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(),
                "application/json",
            )

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            path = unquote(url.path)
            lab = state.lab
            if path == "/boot.ipxe":
                self._send(200, CHAIN_SCRIPT.encode())
            elif path == "/ipxe":
                script, answer = answer_ipxe(lab, query, self._base_url(), state.state_dir)
                state.record(
                    Boot(
                        time.time(),
                        normalise_mac(query.get("mac", "")),
                        answer,
                        self.client_address[0],
                    )
                )
                self._send(200, script.encode())
            elif path.startswith("/files/"):
                self._file(path.removeprefix("/files/"))
            elif path.startswith("/v1/metadata/"):
                facts = Facts.from_query({"mac": path.removeprefix("/v1/metadata/")}, lab)
                group = select_group(lab, facts)
                reservation = find_reservation(state.state_dir, facts)
                if reservation is not None:
                    self._json(reservation_metadata(reservation))
                elif group is None:
                    self._json({"error": "no group for this machine"}, 404)
                else:
                    self._json(
                        {
                            "group": group.name,
                            "machine": facts.values.get("machine"),
                            **group.metadata,
                        }
                    )
            elif path == "/v1/machines":
                self._json(
                    [
                        asdict(m)
                        | {
                            "bmc": (
                                {"driver": m.bmc.driver, "address": m.bmc.address}
                                if m.bmc
                                else None
                            )
                        }
                        for m in lab.machines
                    ]
                )
            elif path == "/v1/profiles":
                self._json({name: asdict(p) for name, p in lab.profiles.items()})
            elif path == "/v1/groups":
                self._json(
                    [
                        {"name": g.name, "profile": g.profile, "selector": dict(g.selector)}
                        for g in lab.groups
                    ]
                )
            elif path == "/v1/boots":
                with state.lock:
                    self._json([asdict(b) for b in state.boots])
            else:
                self._send(404, b"not found\n")

        def do_POST(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 1 << 20))
            if not self._authorized():
                self._json({"error": "a valid token is needed (Authorization: Bearer TOKEN)"}, 401)
                return
            if path == "/v1/reload":
                self._json({"reloaded": state.reload()})
            else:
                self._json({"error": "not found"}, 404)

        def _authorized(self) -> bool:
            if not state.token:
                return False
            given = self.headers.get("Authorization", "")
            return given.startswith("Bearer ") and hmac.compare_digest(
                given[7:].encode(), state.token.encode()
            )

        def _file(self, request_path: str) -> None:
            served = resolve_served(state.root, request_path)
            if served is None:
                self._send(404, b"not found\n")
                return
            common = {"ETag": served.etag, "Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
            if self.headers.get("If-None-Match") == served.etag:
                self.send_response(304)
                for key, value in common.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            wanted = parse_range(self.headers.get("Range"), served.size)
            if wanted == "unsatisfiable":
                self._send(416, b"", headers={**common, "Content-Range": f"bytes */{served.size}"})
                return
            start, end = wanted if isinstance(wanted, tuple) else (0, served.size - 1)
            length = max(0, end - start + 1)
            self.send_response(206 if isinstance(wanted, tuple) else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            if isinstance(wanted, tuple):
                self.send_header("Content-Range", f"bytes {start}-{end}/{served.size}")
            for key, value in common.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command == "HEAD" or length == 0:
                return
            self.wfile.flush()
            send_file_range(self.connection.fileno(), served.path, start, length)

    return Handler


class BootServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is routine (debug); anything else is logged once, with the
        exception's type and message, not a traceback on stderr."""
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("client %s went away: %s", client_address[0], error)
        else:
            log.error(
                "request from %s failed: %s: %s", client_address[0], type(error).__name__, error
            )


def start_http(
    state: ServeState, host: str = "127.0.0.1", port: int = 0, stop: threading.Event | None = None
) -> tuple[BootServer, Callable[[], None]]:
    """Serve ``state`` from background threads; returns the server and a function that stops it."""
    server = BootServer((host, port), _handler(state))
    stop = stop or threading.Event()
    if state.lab_file is not None:
        with contextlib.suppress(OSError):
            state.lab_mtime = state.lab_file.stat().st_mtime_ns
        threading.Thread(target=state.watch, args=(stop,), daemon=True, name="lab-watch").start()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True, name="http"
    )
    thread.start()

    def shutdown() -> None:
        stop.set()
        server.shutdown()
        server.server_close()

    return server, shutdown
