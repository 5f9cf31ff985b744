"""``provision serve``: network boot for bare metal (the metal target's own command).

Serves, in one process, what machines that network-boot need: the iPXE chain and per-machine
scripts, the published images (HTTP with ranges), metadata, and a small JSON API. Runs in the
foreground until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from provision.errors import UsageError


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve", help="network-boot bare-metal machines (iPXE, HTTP, metadata)",
        description="Serve the iPXE scripts, images and metadata machines of a lab boot from. "
        "Machines of clusters on the metal target boot the image their group runs.",
    )
    serve.add_argument("--lab", required=True, metavar="FILE", help="the lab file: profiles, groups, inventory")
    serve.add_argument("--state", metavar="DIR", help="the metal state directory the cluster's provider uses "
                       "(published images, reservations); its images/ is the served root")
    serve.add_argument("--root", metavar="DIR", help="serve files from DIR instead of STATE/images")
    serve.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="HTTP address (default 127.0.0.1:8080)")
    serve.add_argument("--token-file", metavar="FILE", help="the API token (else $PROVISION_SERVE_TOKEN); "
                       "without one the API is read-only")
    serve.set_defaults(func=run_serve)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: must be HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def run_serve(args: argparse.Namespace) -> int:
    from provision.providers.metal.lab import load_lab
    from provision.providers.metal.server import ServeState, start_http

    host, port = _listen(args.listen)
    lab_file = Path(args.lab)
    lab = load_lab(lab_file)
    state_dir = Path(args.state) if args.state else None
    root = Path(args.root) if args.root else (state_dir / "images" if state_dir else None)
    if root is None:
        raise UsageError("give --state (a cluster's metal state directory) or --root (a directory to serve)")
    root.mkdir(parents=True, exist_ok=True)
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--token-file {args.token_file}: {exc.strerror}") from exc
    token = token or os.environ.get("PROVISION_SERVE_TOKEN") or None
    logging.getLogger("provision.serve").setLevel(logging.INFO)
    stop = threading.Event()
    try:
        server, shutdown = start_http(ServeState(lab, root, lab_file, token, state_dir=state_dir), host, port, stop)
    except OSError as exc:
        raise UsageError(f"--listen {args.listen}: {exc.strerror}") from exc
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"serving http://{host}:{server.server_address[1]} (lab {lab_file}, root {root})", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    shutdown()
    return 0
