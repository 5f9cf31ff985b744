"""CLI subcommands: each module here exposes ``register(subparsers)``; cli.py finds them all."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from provision.errors import ProvisionError, UsageError

if TYPE_CHECKING:
    from provision.oci.store import ImageStore

T = TypeVar("T")


def argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` from a library parser: its ProvisionError becomes argparse's
    usage error (exit 2, with the library's message)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ProvisionError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_journal_option(parser: argparse.ArgumentParser) -> None:
    """``--journal PATH`` of the commands that act on a cluster."""
    parser.add_argument(
        "--journal",
        metavar="PATH",
        help="journal: a SQLite file or etcd://HOST:PORT,.../PREFIX (default from the spec)",
    )


def check_seconds(name: str, value: float, *, zero: bool) -> None:
    """Refuse a time-out or interval that is negative, infinite, NaN (or 0 unless ``zero``),
    before any work starts (and before any lease is taken)."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise UsageError(
            f"{name} must be a finite number of seconds{' (0 or more)' if zero else ' above 0'}, not {value:g}"
        )


def open_image_store(path: Path | None) -> ImageStore:
    """The image cache at ``--cache PATH`` (else the default one); refused when the path
    exists but is not a directory."""
    from provision.oci.store import ImageStore

    store = ImageStore(path) if path else ImageStore.default()
    if store.root.exists() and not store.root.is_dir():
        where = "--cache" if path else "the image cache"
        raise UsageError(
            f"{where} {store.root}: not a directory",
            hint="the cache is a directory (an OCI image layout); give another with --cache",
        )
    return store


def number_flag(low: float, high: float, *, integer: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite number in ``[low, high]`` (a whole one with
    ``integer``); anything else is a usage error naming the range."""
    what = "a whole number" if integer else "a number"

    def convert(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (low <= value <= high):  # also refuses nan and inf
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} from {low:g} to {high:g}")
        return value

    convert.__name__ = "integer" if integer else "number"
    return convert
