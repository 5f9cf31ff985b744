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
from typing import Any

from provision import __version__, commands
from provision.errors import ProvisionError


def _base_parser() -> tuple[argparse.ArgumentParser, Any]:
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
    return parser, subparsers


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. With ``command``, only the command module of that name
    registers when it defines that command (a faster start: the other modules' imports are
    skipped); otherwise every module does."""
    modules = sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name)
    parser, subparsers = _base_parser()
    if command is not None and any(m.name == command for m in modules):
        importlib.import_module(f"{commands.__name__}.{command}").register(subparsers)
        if command in subparsers.choices:
            return parser
        parser, subparsers = _base_parser()
    for info in modules:
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The command's name: the first argument that is not an option (-v, -vv, --verbose)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_word(argv))
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
