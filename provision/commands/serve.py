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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provision.errors import UsageError
from provision.spec.source import read_text_file


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="network-boot bare-metal machines (iPXE, HTTP, metadata)",
        description="Serve the iPXE scripts, images and metadata machines of a lab boot from. "
        "Machines of clusters on the metal target boot the image their group runs.",
    )
    serve.add_argument(
        "--lab", required=True, metavar="FILE", help="the lab file: profiles, groups, inventory"
    )
    serve.add_argument(
        "--state",
        metavar="DIR",
        help="the metal state directory the cluster's provider uses "
        "(published images, reservations); its images/ is the served root",
    )
    serve.add_argument("--root", metavar="DIR", help="serve files from DIR instead of STATE/images")
    serve.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="HTTP address (default 127.0.0.1:8080)",
    )
    serve.add_argument(
        "--token-file",
        metavar="FILE",
        help="the API token (else $PROVISION_SERVE_TOKEN); without one the API is read-only",
    )
    serve.add_argument(
        "--tftp",
        metavar="HOST:PORT",
        help="also serve the iPXE binaries over TFTP (e.g. 0.0.0.0:69) "
        "for firmware that only boots from TFTP",
    )
    serve.add_argument(
        "--dhcp",
        choices=("proxy", "full"),
        help="answer PXE clients: proxy (beside the network's "
        "DHCP server) or full (hand out addresses too, labs only)",
    )
    serve.add_argument(
        "--dhcp-listen",
        default="0.0.0.0",
        metavar="HOST",
        help="DHCP address (default 0.0.0.0, port 67)",
    )
    serve.add_argument(
        "--boot-server", metavar="IP", help="this host's address on the boot network (with --dhcp)"
    )
    serve.add_argument(
        "--dhcp-pool", metavar="FIRST-LAST", help="addresses to hand out (--dhcp full)"
    )
    serve.add_argument("--dhcp-router", metavar="IP", help="the router to give (--dhcp full)")
    serve.add_argument(
        "--dhcp-dns",
        metavar="IP",
        action="append",
        default=[],
        help="a DNS server to give (--dhcp full)",
    )
    serve.add_argument(
        "--answer-unknown",
        action="store_true",
        help="answer DHCP for machines not in the inventory too",
    )
    serve.add_argument(
        "--dhcp-chain-ipxe",
        action="store_true",
        help="hand BIOS machines whose firmware is iPXE (a NIC ROM) this server's "
        "undionly.kpxe over TFTP first (needs --tftp)",
    )
    serve.add_argument(
        "--no-router-answers",
        action="store_true",
        help="do not answer IPv6 router solicitations (with --dhcp or --tftp they are answered "
        "so that iPXE does not wait ~16 s for an IPv6 router on networks that have none)",
    )
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
    if args.dhcp_chain_ipxe and not (args.dhcp and args.tftp):
        raise UsageError("--dhcp-chain-ipxe needs --dhcp and --tftp: the binary comes from here")
    lab_file = Path(args.lab)
    lab = load_lab(lab_file)
    state_dir = Path(args.state) if args.state else None
    root = Path(args.root) if args.root else (state_dir / "images" if state_dir else None)
    if root is None:
        raise UsageError(
            "give --state (a cluster's metal state directory) or --root (a directory to serve)"
        )
    root.mkdir(parents=True, exist_ok=True)
    token = None
    if args.token_file:  # a regular file, bounded (a FIFO would block, /dev/zero never end)
        text, problems = read_text_file(Path(args.token_file))
        if text is None:
            raise UsageError(f"--token-file {problems[0]}")
        token = text.strip()
    token = token or os.environ.get("PROVISION_SERVE_TOKEN") or None
    logging.getLogger("provision.serve").setLevel(logging.INFO)
    stop = threading.Event()
    state = ServeState(lab, root, lab_file, token, state_dir=state_dir)
    try:
        server, shutdown = start_http(state, host, port, stop)
    except OSError as exc:
        raise UsageError(f"--listen {args.listen}: {exc.strerror}") from exc
    stoppers = [shutdown]
    if args.tftp:
        stoppers.append(_start_tftp(args.tftp))
    if args.dhcp:
        stoppers += _start_dhcp(args, state, port=server.server_address[1], http_host=host)
    if (args.dhcp or args.tftp) and not args.no_router_answers:
        stoppers += _start_router_answers(args, state)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        f"serving http://{host}:{server.server_address[1]} (lab {lab_file}, root {root})",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    for stopper in stoppers:
        stopper()
    return 0


def _start_tftp(listen: str) -> Callable[[], None]:
    from provision.providers.metal.tftp import IPXE_DIR, IPXE_FILES, TftpServer, ipxe_files

    host, port = _listen(listen)
    files = ipxe_files()
    missing = [name for name in IPXE_FILES if name not in files]
    if missing:
        raise UsageError(
            f"--tftp: the iPXE binaries are missing ({', '.join(str(IPXE_DIR / m) for m in missing)})",
            hint="apt-get install ipxe",
        )
    try:
        server = TftpServer(files, host, port)
    except OSError as exc:
        raise UsageError(f"--tftp {listen}: {exc.strerror}") from exc
    threading.Thread(target=server.serve_forever, daemon=True, name="tftp").start()
    print(f"serving tftp://{host}:{server.address[1]} ({IPXE_DIR})", file=sys.stderr, flush=True)
    return server.shutdown


def _start_router_answers(args: argparse.Namespace, state: Any) -> list[Callable[[], None]]:
    from provision.providers.metal.ndp import RouterSolicitationAnswerer

    try:
        answerer = RouterSolicitationAnswerer(
            lambda mac: args.answer_unknown or state.lab.machine_by_mac(mac) is not None
        )
    except OSError as exc:
        print(
            f"warning: IPv6 router solicitations not answered ({exc.strerror}): "
            "iPXE waits ~16 s per stage on a network without an IPv6 router",
            file=sys.stderr,
            flush=True,
        )
        return []
    threading.Thread(target=answerer.serve_forever, daemon=True, name="ndp").start()
    print(
        "answering IPv6 router solicitations (lifetime 0, no prefix: not a router)",
        file=sys.stderr,
        flush=True,
    )
    return [answerer.shutdown]


def _start_dhcp(
    args: argparse.Namespace, state: Any, *, port: int, http_host: str
) -> list[Callable[[], None]]:
    import ipaddress

    from provision.providers.metal.dhcp import DhcpServer, DhcpSettings

    if not args.boot_server:
        raise UsageError("--dhcp needs --boot-server IP: this host's address on the boot network")
    try:
        boot_server = str(ipaddress.IPv4Address(args.boot_server))
        pool = None
        if args.dhcp_pool:
            first, _, last = args.dhcp_pool.partition("-")
            pool = (str(ipaddress.IPv4Address(first)), str(ipaddress.IPv4Address(last)))
        router = str(ipaddress.IPv4Address(args.dhcp_router)) if args.dhcp_router else None
        dns = tuple(str(ipaddress.IPv4Address(d)) for d in args.dhcp_dns)
    except ValueError as exc:
        raise UsageError(f"--dhcp: {exc}") from exc
    if args.dhcp == "full" and pool is None:
        raise UsageError("--dhcp full needs --dhcp-pool FIRST-LAST")
    settings = DhcpSettings(
        boot_server,
        f"http://{boot_server}:{port}",
        args.dhcp,
        pool,
        router=router,
        dns=dns,
        answer_unknown=args.answer_unknown,
        chain_ipxe=args.dhcp_chain_ipxe,
        known=lambda mac: state.lab.machine_by_mac(mac) is not None,
    )
    stoppers = []
    for dhcp_port in (67, 4011):
        try:
            server = DhcpServer(settings, args.dhcp_listen, dhcp_port)
        except OSError as exc:
            raise UsageError(
                f"--dhcp: cannot listen on {args.dhcp_listen}:{dhcp_port}: {exc.strerror}"
            ) from exc
        threading.Thread(target=server.serve_forever, daemon=True, name=f"dhcp-{dhcp_port}").start()
        stoppers.append(server.shutdown)
    print(
        f"answering {args.dhcp} DHCP on {args.dhcp_listen}:67 and :4011 (boot server {boot_server})",
        file=sys.stderr,
        flush=True,
    )
    return stoppers
