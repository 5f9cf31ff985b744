"""The exceptions the library raises. Only the CLI prints them and chooses an exit code."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class ProvisionError(Exception):
    """Base of every error provision raises on purpose: a message and an optional hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ProvisionError):
    """The command line asked for something that cannot be done as asked."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class Problem:
    """One located problem in a user's file: ``file:line:column: key: message``."""

    file: str
    line: int
    column: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class SpecError(ProvisionError):
    """A spec (image or cluster) has problems; all of them are listed, each located."""

    exit_code = 2

    def __init__(self, problems: Iterable[Problem], hint: str | None = None) -> None:
        self.problems = tuple(sorted(set(problems)))
        count = len(self.problems)
        if count == 1:  # one problem is one line
            super().__init__(str(self.problems[0]), hint)
            return
        head = f"{count} problems in spec"
        super().__init__(head + "\n" + "\n".join(str(p) for p in self.problems), hint)


class HostileInputError(ProvisionError):
    """An image layer, archive or path tried to escape its root or carried what does not belong."""

    exit_code = 2


class ToolMissingError(ProvisionError):
    """External programs needed for the work are not installed."""


class CommandError(ProvisionError):
    """An external command failed; the message carries a copy-pasteable command line."""


class RegistryError(ProvisionError):
    """A registry refused, failed or answered with something that is not what was asked."""


class DigestMismatchError(RegistryError):
    """Content did not hash to the digest that named it."""

    exit_code = 2


class ImageNotFoundError(ProvisionError):
    """An image reference is neither in the local store nor (where asked) in its registry."""
