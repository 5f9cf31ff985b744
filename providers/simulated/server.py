"""The simulated cloud over HTTP: ``serve_simulated_cloud`` (a background thread) and
``python -m provision.providers.simulated.server --port N`` (a process). The wire protocol:
``GET|POST /v1/instances``, ``DELETE /v1/instances/ID?epoch=N``, ``GET /v1/instances/ID/health``,
``GET /v1/images?digest=D``, ``POST /v1/images``; errors map 429, 503, 504 (outcome unknown),
409 (stale epoch) and 400 back to the provider error classes. ``/v1/admin/*`` are the test
harness's hands (health, faults, the lag-free truth)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from provision.providers.simulated.cloud import SimulatedCloud, instance_to_json
from provision.reconcile.provider import (
    CreateRequest,
    HealthState,
    OutcomeUnknownError,
    ProviderError,
    RateLimitedError,
    StaleEpochError,
    TransientProviderError,
)


def serve_simulated_cloud(
    cloud: SimulatedCloud, host: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    """Serve ``cloud`` over HTTP on ``host:port`` (0 picks a port) from a background thread."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def _guard(self, action: Callable[[], tuple[int, Any]]) -> None:
            try:
                code, body = action()
            except OutcomeUnknownError as exc:
                code, body = 504, {"error": str(exc)}
            except RateLimitedError as exc:
                code, body = 429, {"error": str(exc), "retry_after": exc.retry_after}
            except TransientProviderError as exc:
                code, body = 503, {"error": str(exc)}
            except StaleEpochError as exc:
                code, body = 409, {"error": str(exc), "kind": "stale-epoch"}
            except ProviderError as exc:
                code, body = 400, {"error": str(exc)}
            self._reply(code, body)

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            parts = url.path.strip("/").split("/")
            if parts == ["v1", "instances"]:
                tags = dict(t.split("=", 1) for t in query.get("tag", []))
                tokens = query.get("page_token") or []
                token = tokens[0] if tokens else None

                def listing() -> tuple[int, Any]:
                    page = cloud.list_page(tags, token)
                    return 200, {
                        "instances": [instance_to_json(i) for i in page.instances],
                        "next_token": page.next_token,
                    }

                self._guard(listing)
            elif len(parts) == 4 and parts[:2] == ["v1", "instances"] and parts[3] == "health":
                self._reply(200, {"state": cloud.health(parts[2]).value})
            elif parts == ["v1", "images"]:
                digest = (query.get("digest") or [""])[0]
                found = cloud.find_image(digest)
                self._reply(200, {"id": found}) if found else self._reply(
                    404, {"error": f"no image {digest}"}
                )
            elif parts == ["v1", "admin", "live"]:
                self._reply(200, {"instances": [instance_to_json(i) for i in cloud.live()]})
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            parts = urlsplit(self.path).path.strip("/").split("/")
            body = self._body()
            if parts == ["v1", "instances"]:
                request = CreateRequest(
                    body["key"],
                    body["name"],
                    body["image"],
                    body.get("properties", {}),
                    body["tags"],
                    int(body["epoch"]),
                )
                self._guard(lambda: (200, instance_to_json(cloud.create(request))))
            elif parts == ["v1", "images"]:

                def registering() -> tuple[int, Any]:
                    image_id, reused = cloud.register_image(str(body["digest"]))
                    return 200, {"id": image_id, "reused": reused}

                self._guard(registering)
            elif parts == ["v1", "admin", "health"]:
                state = body.get("state")
                cloud.set_health(body["id"], HealthState(state) if state else None)
                self._reply(200, {})
            elif parts == ["v1", "admin", "faults"]:
                for key in (
                    "list_lag",
                    "create_timeout_rate",
                    "error_rate",
                    "call_delay",
                    "next_error",
                ):
                    if key in body:
                        setattr(cloud.faults, key, body[key])
                self._reply(200, {})
            else:
                self._reply(404, {"error": "not found"})

        def do_DELETE(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            epoch = int((parse_qs(url.query).get("epoch") or ["0"])[0])
            if len(parts) == 3 and parts[:2] == ["v1", "instances"]:

                def destroying() -> tuple[int, Any]:
                    cloud.destroy(parts[2], epoch)
                    return 200, {}

                self._guard(destroying)
            else:
                self._reply(404, {"error": "not found"})

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="simulated-cloud", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    """``python -m provision.providers.simulated.server --port 8900 [--state FILE]``: serve a cloud."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(description="serve a simulated cloud on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--boot-seconds", type=float, default=0.0)
    parser.add_argument("--page-size", type=int, default=500)
    args = parser.parse_args(argv)
    cloud = SimulatedCloud(page_size=args.page_size, boot_seconds=args.boot_seconds)
    server = serve_simulated_cloud(cloud, port=args.port)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
