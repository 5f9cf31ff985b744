"""CLI subcommands: each module here exposes ``register(subparsers)``; cli.py finds them all."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

from provision.errors import ProvisionError, UsageError

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


def check_seconds(name: str, value: float, *, zero: bool) -> None:
    """Refuse a time-out or interval that is negative, infinite, NaN (or 0 unless ``zero``),
    before any work starts (and before any lease is taken)."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise UsageError(f"{name} must be a finite number of seconds{' (0 or more)' if zero else ' above 0'}, not {value:g}")
