"""A reverse proxy in front of Azurite that fails chosen requests: queued faults for Put Page
(``PUT ...?comp=page``) answer with a storage error (and ``Retry-After``), everything else is
forwarded unchanged (Shared Key signatures do not cover the host, so they still verify)."""

from __future__ import annotations

import http.client
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class BlobFaults:
    upstream: int  # Azurite's port
    pages: deque[tuple[int, int | None]] = field(default_factory=deque)  # (status, Retry-After)
    failed: int = 0
    outage_after: int | None = None  # after this many Put Page calls pass, every one fails with 503
    passed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_pages(self, status: int, times: int = 1, retry_after: int | None = None) -> None:
        for _ in range(times):
            self.pages.append((status, retry_after))


def serve_blob_faults(faults: BlobFaults) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

        def _proxy(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fault = None
            if self.command == "PUT" and "comp=page" in self.path:
                with faults.lock:
                    fault = faults.pages.popleft() if faults.pages else None
                    if (
                        fault is None
                        and faults.outage_after is not None
                        and faults.passed >= faults.outage_after
                    ):
                        fault = (503, None)
                    faults.failed += fault is not None
                    faults.passed += fault is None
            if fault is not None:
                status, retry_after = fault
                text = b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code><Message>injected</Message></Error>'
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)
                return
            upstream = http.client.HTTPConnection("127.0.0.1", faults.upstream, timeout=60)
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
            }
            headers["Host"] = f"127.0.0.1:{faults.upstream}"
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            head = self.command == "HEAD"  # its Content-Length is the blob's, with no body
            for key, value in answer.getheaders():
                if key.lower() not in ("connection", "transfer-encoding") and (
                    head or key.lower() != "content-length"
                ):
                    self.send_header(key, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            upstream.close()

        do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _proxy  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])
