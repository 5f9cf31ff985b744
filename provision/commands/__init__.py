"""CLI subcommands: each module here exposes ``register(subparsers)``; cli.py finds them all."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from provision.errors import ProvisionError

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
