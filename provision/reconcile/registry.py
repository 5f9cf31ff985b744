"""Provider types by name. Built in: ``simulated`` (a JSON-file cloud, or in memory) and
``simulated-http``. Any other type ``T`` is looked up as ``provision.providers.T`` exposing
``create_provider(spec: ProviderSpec, clock: Clock) -> Provider`` (qemu, aws, gcp, azure, pxe)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from provision.errors import ProvisionError
from provision.reconcile.clock import Clock
from provision.reconcile.provider import Provider
from provision.reconcile.spec import ClusterSpec, ProviderSpec

ProviderFactory = Callable[[ProviderSpec, Clock, Path], Provider]
_FACTORIES: dict[str, ProviderFactory] = {}


def register_provider(kind: str, factory: ProviderFactory) -> None:
    _FACTORIES[kind] = factory


def _simulated(spec: ProviderSpec, clock: Clock, base: Path) -> Provider:
    from provision.providers.simulated.cloud import (
        FileSimulatedProvider,
        SimulatedCloud,
        SimulatedProvider,
    )

    state = spec.options.get("state")
    if state:
        return FileSimulatedProvider(str(base / str(state)), clock, spec.name)
    return SimulatedProvider(SimulatedCloud(clock), spec.name)


def _simulated_http(spec: ProviderSpec, clock: Clock, base: Path) -> Provider:
    from provision.providers.simulated.cloud import HttpSimulatedProvider

    url = spec.options.get("url")
    if not isinstance(url, str) or not url.startswith("http://127.0.0.1"):
        raise ProvisionError(f"provider {spec.name!r}: options.url must be http://127.0.0.1:PORT")
    return HttpSimulatedProvider(url, spec.name)


def _qemu(spec: ProviderSpec, clock: Clock, base: Path) -> Provider:
    from provision.providers.qemu.provider import create_qemu_provider

    return create_qemu_provider(spec, clock, base)


register_provider("simulated", _simulated)
register_provider("simulated-http", _simulated_http)
register_provider("qemu", _qemu)


def create_providers(spec: ClusterSpec, clock: Clock) -> dict[str, Provider]:
    """One provider per name the spec's groups use."""
    base = Path(spec.source_file).parent if not spec.source_file.startswith("<") else Path.cwd()
    result: dict[str, Provider] = {}
    for name in sorted({g.provider for g in spec.groups}):
        pspec = spec.providers[name]
        factory = _FACTORIES.get(pspec.type)
        if factory is None:
            try:
                module = importlib.import_module(f"provision.providers.{pspec.type}")
            except ImportError as exc:
                raise ProvisionError(
                    f"provider {name!r}: unknown type {pspec.type!r}",
                    hint="built in: simulated, simulated-http; others come from provision.providers.<type>",
                ) from exc
            create = getattr(module, "create_provider", None)
            if create is None:
                raise ProvisionError(f"provider type {pspec.type!r} has no create_provider() yet")
            result[name] = create(pspec, clock)
            continue
        result[name] = factory(pspec, clock, base)
    return result
