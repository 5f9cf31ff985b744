"""The thin command line: parse arguments, call the library, print, choose the exit code.

Each module of ``provision.commands`` exposes ``register(subparsers)`` and sets
``func=handler`` on its parser(s); a handler takes the parsed ``argparse.Namespace`` and
returns an exit code. The library raises ``ProvisionError``; only this module prints it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from provision import __version__, commands
from provision.errors import ProvisionError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provision",
        description="Build minimal Linux machine images and keep fleets of machines running them.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what runs (every external command) to stderr; -vv adds the "
                        "HTTP libraries' logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = subparsers.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _args: print(f"provision {__version__}") or 0)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if args.verbose < 2:
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        code = args.func(args)
    except ProvisionError as exc:
        print(f"provision: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("provision: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
