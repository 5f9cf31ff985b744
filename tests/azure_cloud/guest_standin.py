"""Stand-ins of what an Azure VM's guest talks to: IMDS (answers only ``Metadata: true``; the
compute fields given) and the WireServer (the goal state; the health reports it records), on
one HTTP server on 127.0.0.1 (paths do not overlap)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAzure1 one",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAzure2 two",
]
GOAL_STATE = """<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>3</Incarnation>
  <Machine><ExpectedState>Started</ExpectedState></Machine>
  <Container>
    <ContainerId>c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>896c0a3f-1ae4-4bd6-8b6f-24c1fa0c5de0._web-1</InstanceId>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"""


@dataclass
class Azure:
    compute: dict[str, Any] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # IMDS reads without "Metadata: true"
    reports: list[tuple[dict[str, str], str]] = field(default_factory=list)  # (headers, body)
    goal_state_reads: int = 0


def serve_azure_guest(azure: Azure) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

        def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/machine/":
                if self.headers.get("x-ms-version") != "2012-11-30" or query.get("comp") != [
                    "goalstate"
                ]:
                    self._answer(400, b"")
                    return
                azure.goal_state_reads += 1
                self._answer(200, GOAL_STATE.encode(), "text/xml")
                return
            if self.headers.get("Metadata") != "true":
                azure.refused.append(url.path)
                self._answer(
                    400, b'{"error": "Bad request. Required metadata header not specified"}'
                )
                return
            name = url.path.removeprefix("/metadata/instance/compute/")
            if "api-version" not in query or name not in azure.compute:
                self._answer(404, b"")
                return
            value = azure.compute[name]
            self._answer(
                200, json.dumps(value).encode() if not isinstance(value, str) else value.encode()
            )

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            if urlsplit(self.path).path == "/machine/" and "comp=health" in self.path:
                azure.reports.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self._answer(200, b"")
                return
            self._answer(404, b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
