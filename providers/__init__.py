"""The targets, imported as ``provision.providers``: the ONE registry of places machines run.

A target is a package ``providers/NAME/`` whose object satisfies ``provision.target.Target``;
adding one means adding the package and one line to ``_TARGETS`` (the provider ``type`` in a
cluster spec, and where its object lives). Targets are imported only when a spec uses them.
A target that pushes declares its ``provision push NAME`` in ``providers/NAME/push_command.py``
(``PUSH_COMMAND``, no SDK imported there): :func:`push_commands` reads those alone.
"""

from __future__ import annotations

import importlib
import importlib.util

from provision.errors import UsageError
from provision.push import PushCommand
from provision.target import Target

_TARGETS: dict[str, tuple[str, str]] = {
    "simulated": ("provision.providers.simulated.target", "SIMULATED"),
    "simulated-http": ("provision.providers.simulated.target", "SIMULATED_HTTP"),
    "qemu": ("provision.providers.qemu.target", "QEMU_TARGET"),
    "metal": ("provision.providers.metal.target", "METAL_TARGET"),
    "aws": ("provision.providers.aws.target", "AWS_TARGET"),
    "azure": ("provision.providers.azure.target", "AZURE_TARGET"),
    "gcp": ("provision.providers.gcp.target", "GCP_TARGET"),
}


def target_names() -> tuple[str, ...]:
    """Every registered provider type, sorted."""
    return tuple(sorted(_TARGETS))


def find_target(name: str) -> Target | None:
    """The target registered as ``name``, or None."""
    where = _TARGETS.get(name)
    if where is None:
        return None
    module, attribute = where
    target = getattr(importlib.import_module(module), attribute)
    if not isinstance(target, Target):
        raise TypeError(f"{module}.{attribute} is not a Target")
    return target


def get_target(name: str) -> Target:
    """The target registered as ``name``; a UsageError naming the known ones otherwise."""
    target = find_target(name)
    if target is None:
        raise UsageError(
            f"unknown provider type {name!r}", hint="known: " + ", ".join(target_names())
        )
    return target


def push_commands() -> dict[str, PushCommand]:
    """``provision push NAME`` of every target that pushes, by name; the targets themselves (and
    their SDKs) are not imported."""
    found: dict[str, PushCommand] = {}
    for name in target_names():
        package = _TARGETS[name][0].rpartition(".")[0]
        if importlib.util.find_spec(f"{package}.push_command") is None:
            continue
        command = importlib.import_module(f"{package}.push_command").PUSH_COMMAND
        if not isinstance(command, PushCommand):
            raise TypeError(f"{package}.push_command.PUSH_COMMAND is not a PushCommand")
        found[name] = command
    return found
