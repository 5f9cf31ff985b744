"""Prometheus text metrics and the daemon's health endpoint, served on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Labels = tuple[tuple[str, str], ...]

_HELP = {
    "provision_reconcile_passes_total": ("counter", "Reconcile passes per group."),
    "provision_reconcile_errors_total": (
        "counter",
        "Failed provider calls per group and operation.",
    ),
    "provision_provider_calls_total": ("counter", "Provider calls per provider and operation."),
    "provision_machines_created_total": ("counter", "Machines created per group."),
    "provision_machines_destroyed_total": ("counter", "Machines destroyed per group and reason."),
    "provision_group_desired": ("gauge", "Desired machines per group."),
    "provision_group_observed": ("gauge", "Owned machines observed per group."),
    "provision_group_available": ("gauge", "Available (healthy) machines per group."),
    "provision_group_up_to_date": (
        "gauge",
        "Machines running the desired configuration per group.",
    ),
    "provision_group_converged": ("gauge", "1 when the group matches its spec."),
    "provision_pass_seconds_sum": ("counter", "Total time spent in reconcile passes per group."),
    "provision_leader_epoch": ("gauge", "Fencing epoch held by this daemon (0: not leader)."),
    "provision_group_owned": (
        "gauge",
        "1 while this daemon owns the group (sharded daemons on etcd).",
    ),
    "provision_group_epoch": ("gauge", "The group's fencing token held by this daemon (sharded)."),
    "provision_member_epoch": ("gauge", "This daemon's membership token (sharded)."),
    "provision_shard_members": ("gauge", "Live daemons sharing the cluster (sharded)."),
    "provision_etcd_requests_total": ("counter", "Requests this daemon made to etcd."),
}


class Metrics:
    """A small thread-safe registry of counters and gauges."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, Labels], float] = {}
        self._lock = threading.Lock()

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
        lines: list[str] = []
        last = ""
        for (name, labels), value in items:
            if name != last:
                kind, text = _HELP.get(name, ("untyped", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                last = name
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            number = (
                str(int(value)) if float(value).is_integer() else f"{value:g}"
            )  # tokens and counters exactly
            lines.append(f"{name}{{{label_text}}} {number}" if labels else f"{name} {number}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def serve_metrics(
    listen: str, metrics: Metrics, healthy: Callable[[], bool | tuple[bool, str]]
) -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/healthz`` on ``listen`` (HOST:PORT; port 0 picks one);
    ``healthy`` answers a bool, or (bool, the text /healthz shows)."""
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's spelling)
            if self.path == "/metrics":
                self._send(200, metrics.render(), "text/plain; version=0.0.4")
            elif self.path == "/healthz":
                answer = healthy()
                ok, text = (
                    answer
                    if isinstance(answer, tuple)
                    else (answer, "ok\n" if answer else "unhealthy\n")
                )
                self._send(200 if ok else 503, text, "text/plain")
            else:
                self._send(404, "not found\n", "text/plain")

        def _send(self, code: int, body: str, kind: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
