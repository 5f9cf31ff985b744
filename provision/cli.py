"""The thin command line: parse arguments, call the library, print, choose the exit code.

Each module of ``provision.commands`` exposes ``register(subparsers)`` and sets
``func=handler`` on its parser(s); a handler takes the parsed ``argparse.Namespace`` and
returns an exit code. The library raises ``ProvisionError``; only this module prints it.

No traceback reaches a user: every error is one line on stderr (``provision: error: ...``,
optionally followed by ``hint:`` lines). A usage error exits 2 (bad arguments, bad input files),
a failure 1. An ``OSError`` or a decode error that a command did not turn into a
``ProvisionError`` itself still becomes one line here, naming the file; anything else is an
internal error (a bug): one line too, with the traceback in the log at ``-v``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from provision import __version__, commands
from provision.errors import ProvisionError

log = logging.getLogger("provision")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to find the usage), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def describe_os_error(exc: OSError) -> str:
    """``cannot access PATH: No such file or directory`` (the path when the error has one)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None and exc.filename2 is not None:
        return f"{os.fsdecode(exc.filename)} -> {os.fsdecode(exc.filename2)}: {reason}"
    if exc.filename is not None and not isinstance(exc.filename, int):
        return f"{os.fsdecode(exc.filename)}: {reason}"
    return reason


def _say_error(message: str, hint: str | None = None) -> None:
    print(f"provision: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def _base_parser() -> tuple[argparse.ArgumentParser, Any]:
    parser = OneLineParser(
        prog="provision",
        description="Build minimal Linux machine images and keep fleets of machines running them.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log what runs (every external command) to stderr; -vv adds the HTTP libraries' logs",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = subparsers.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _args: print(f"provision {__version__}") or 0)
    return parser, subparsers


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. With ``command``, only the command module of that name
    registers when it defines that command (a faster start: the other modules' imports are
    skipped; none for ``version``); otherwise every module does."""
    parser, subparsers = _base_parser()
    if command is not None and command in subparsers.choices:  # `version`: no module needed
        return parser
    modules = sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name)
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
    return run_handler(args.func, args)


def run_handler(
    handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace
) -> int:
    """Run a command's handler and turn whatever it raises into one line and an exit code."""
    try:
        code = handler(args)
    except ProvisionError as exc:
        _say_error(exc.message, exc.hint)
        return exc.exit_code
    except KeyboardInterrupt:
        print("provision: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`provision plan | head`): stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1
    except UnicodeError as exc:
        log.debug("traceback", exc_info=True)
        _say_error(f"text encoding error: {exc}")
        return 2
    except OSError as exc:
        log.debug("traceback", exc_info=True)
        _say_error(describe_os_error(exc))
        return 1
    except MemoryError:
        _say_error("out of memory")
        return 1
    except RecursionError:
        log.debug("traceback", exc_info=True)
        _say_error("input nested too deeply")
        return 2
    except Exception as exc:  # a bug: still one line, the traceback at -v
        log.debug("traceback", exc_info=True)
        _say_error(
            f"internal error: {type(exc).__name__}: {exc}".splitlines()[0],
            "this is a bug in provision; run again with -v for the traceback and report it",
        )
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
