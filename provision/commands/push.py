"""``provision push TARGET SOURCE``: publish an image (an image spec or a build's manifest) to a
cloud, idempotent by the image digest."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from provision.errors import UsageError
from provision.providers import get_target, push_commands
from provision.push import ProgressLine, PushCommand, PushOptions, push_source

SOURCE_HELP = (
    "SOURCE is an image spec (built in the target's format first, cached by digest) "
    "or a build's NAME.manifest.json (or its directory)."
)


def register(subparsers: Any) -> None:
    push = subparsers.add_parser(
        "push",
        help="publish an image to a cloud (idempotent by the image digest)",
        description="provision push TARGET SOURCE [options]: each target has its own options "
        "(provision push TARGET --help). " + SOURCE_HELP,
    )
    targets = push.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, command in push_commands().items():
        add_push_command(targets, name, command)


def add_push_command(targets: Any, name: str, command: PushCommand) -> None:
    """``provision push NAME``: SOURCE, the target's own flags, then those of every push."""
    parser = targets.add_parser(
        name, help=command.help, description=f"{command.description} {SOURCE_HELP}"
    )
    parser.add_argument("source", type=Path, metavar="SOURCE")
    parser.add_argument(
        "--name", help="the image is named NAME-<digest12> (default: the build's name)"
    )
    fields = {f.name for f in dataclasses.fields(PushOptions)}
    exclusive: dict[str, Any] = {}
    for group in command.exclusive:
        together = parser.add_mutually_exclusive_group()
        exclusive.update(dict.fromkeys(group, together))
    for flag in command.flags:
        if flag.dest not in fields:
            raise TypeError(f"provision push {name} {flag.names[0]}: no PushOptions.{flag.dest}")
        where = exclusive.get(flag.dest, parser)
        where.add_argument(
            *flag.names, dest=flag.dest, help=flag.help, default=argparse.SUPPRESS, **flag.keywords
        )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds each wait may take (default 3600)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=60.0,
        help="seconds without an answer before a request is retried (default 60)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    parser.set_defaults(func=push_image, push_flags=command.flags)


class ProgressPrinter:
    """Messages one per line; on a terminal, a transfer's progress redrawn in place as a bar."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.open = False  # a bar is on the current line

    def say(self, line: str) -> None:
        if self.tty and isinstance(line, ProgressLine):
            width = 24
            filled = round(line.fraction * width)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}\x1b[K")
            self.stream.flush()
            self.open = True
            return
        self.end()
        print(line, file=self.stream, flush=True)

    def end(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def push_image(args: argparse.Namespace) -> int:
    if args.timeout <= 0 or args.request_timeout <= 0:
        raise UsageError("--timeout and --request-timeout must be positive")
    given: dict[str, Any] = {}
    for flag in args.push_flags:
        if hasattr(args, flag.dest):  # not given: PushOptions' default
            value = getattr(args, flag.dest)
            given[flag.dest] = flag.convert(value) if flag.convert is not None else value
    options = PushOptions(
        name=args.name, timeout=args.timeout, request_timeout=args.request_timeout, **given
    )
    target = get_target(args.target)
    reporter = ProgressPrinter(sys.stderr)
    try:
        result = push_source(
            target, args.target, args.source, options, progress=None if args.quiet else reporter.say
        )
    finally:
        reporter.end()
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        state = "reused" if result.reused else "pushed"
        print(f"{result.image_id} {result.region} ({state} {result.name})")
        for region, image_id in sorted(result.copies.items()):
            print(f"{image_id} {region} (copy)")
    return 0
