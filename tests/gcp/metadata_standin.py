"""A stand-in GCE metadata server on 127.0.0.1: like the real one it refuses every read without
``Metadata-Flavor: Google`` (403), answers with that header, and knows nothing of EC2's paths
(404; a PUT is 405)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/computeMetadata/v1/"


@dataclass
class GceMetadata:
    values: dict[str, str]  # paths below /computeMetadata/v1/ -> their value
    refused: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    url: str = ""
    server: ThreadingHTTPServer | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def serve_gce_metadata(values: dict[str, str]) -> GceMetadata:
    served = GceMetadata(dict(values))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _answer(self, code: int, body: bytes = b"") -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            if code == 200:
                self.send_header("Metadata-Flavor", "Google")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if not self.path.startswith(PREFIX):
                return self._answer(404)
            if self.headers.get("Metadata-Flavor") != "Google":
                served.refused.append(self.path)
                return self._answer(403, b"Missing Metadata-Flavor:Google header.")
            value = served.values.get(self.path[len(PREFIX) :])
            if value is None:
                return self._answer(404)
            served.served.append(self.path)
            self._answer(200, value.encode())

        def do_PUT(self) -> None:  # EC2's token request: not a GCE thing
            self._answer(405)

    served.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{served.server.server_address[1]}"
    threading.Thread(target=served.server.serve_forever, daemon=True).start()
    return served
