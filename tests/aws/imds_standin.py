"""A stand-in EC2 instance metadata service that requires IMDSv2 (as instances launched with
``HttpTokens: required`` do): a token from ``PUT /latest/api/token`` with the TTL header, then
that token on every read; a read without it is refused with 401 and recorded."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "AQAEAstand-in-token=="
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnly4Tests instance-key"


@dataclass
class Imds:
    """What the stand-in serves, and what it saw."""

    files: dict[str, bytes]
    puts: list[dict[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    url: str = ""


def serve_imds(imds: Imds, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            """quiet"""

        def reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:  # noqa: N802
            imds.puts.append(dict(self.headers.items()))
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if self.path != "/latest/api/token" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                self.reply(400, b"")
                return
            self.reply(200, TOKEN.encode())

        def do_GET(self) -> None:  # noqa: N802
            if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                imds.refused.append(self.path)  # IMDSv1: refused, as with HttpTokens=required
                self.reply(401, b"")
                return
            body = imds.files.get(self.path.removeprefix("/latest/"))
            if body is None:
                self.reply(404, b"")
                return
            imds.served.append(self.path)
            self.reply(200, body)

    server = ThreadingHTTPServer((host, 0), Handler)
    imds.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
