"""The providers a cluster spec's groups use, made by their targets (``provision.providers``,
the one registry of targets)."""

from __future__ import annotations

from provision.clock import Clock
from provision.errors import UsageError
from provision.providers import get_target
from provision.reconcile.provider import Provider
from provision.reconcile.spec import ClusterSpec


def create_providers(spec: ClusterSpec, clock: Clock) -> dict[str, Provider]:
    """One provider per name the spec's groups use."""
    result: dict[str, Provider] = {}
    for name in sorted({g.provider for g in spec.groups}):
        pspec = spec.providers.get(name)
        if pspec is None:
            raise UsageError(f"{spec.source_file}: no provider {name!r} is declared")
        result[name] = get_target(pspec.type).create_provider(pspec, clock)
    return result
