"""The simulated targets: ``simulated`` (in the process, or kept in the JSON file
``options.state``) and ``simulated-http`` (a cloud served by
``python -m provision.providers.simulated.server`` at ``options.url``).

They launch any image id; an image spec is built as kernel+initrd and published by registering
its digest with the cloud (one image id per digest). Properties are free-form (the simulated
cloud keeps them as given)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from provision import schema
from provision.clock import Clock
from provision.providers.simulated.client import HttpSimulatedProvider
from provision.providers.simulated.cloud import SimulatedCloud, SimulatedProvider
from provision.providers.simulated.persistence import FileSimulatedProvider
from provision.reconcile.provider import Instance, Provider
from provision.reconcile.spec import ProviderSpec
from provision.schema import Field, Schema
from provision.target import Artifact, Progress, PublishedImage, Target, own_provider

LOCAL_URL = r"http://127\.0\.0\.1:\d{1,5}/?"


class _SimulatedImages:
    """What both simulated targets share: any image id launches, an image spec is built as
    kernel+initrd and published by registering its digest with the cloud."""

    name: str
    provider_class: ClassVar[type[SimulatedProvider] | type[HttpSimulatedProvider]]
    formats: tuple[str, ...] = ("kernel+initrd",)
    properties: Schema = Schema(open=True)
    tools: tuple[str, ...] = ()

    def find_image(self, provider: Provider, digest: str) -> str | None:
        return own_provider(provider, self.provider_class, self.name).find_image(digest)

    def publish(
        self, provider: Provider, artifact: Artifact, progress: Progress | None = None
    ) -> PublishedImage:
        image_id, reused = own_provider(provider, self.provider_class, self.name).register_image(
            artifact.digest
        )
        return PublishedImage(image_id, artifact.digest, reused)

    def resolve_image(
        self,
        provider: Provider,
        image: str,
        progress: Progress | None = None,
        *,
        publish: bool = True,
    ) -> str:
        return image

    def consoles(self, provider: Provider, instances: Sequence[Instance]) -> list[str]:
        return []

    def declared_ports(self, properties: Mapping[str, Any]) -> tuple[int, ...]:
        return ()


@dataclass(frozen=True)
class SimulatedTarget(_SimulatedImages):
    """``simulated``: a cloud in the process's memory, or kept in the file ``options.state``."""

    provider_class = SimulatedProvider
    name: str = "simulated"
    options: Schema = Schema(
        {
            "state": Field("a file path (the cloud's JSON state)", schema.text(max_len=4096)),
            "pageSize": Field(
                "a whole number from 1 to 10000", schema.integer(1, 10_000), doc="default 500"
            ),
        }
    )

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> SimulatedProvider:
        state = spec.options.get("state")
        page_size = int(spec.options.get("pageSize", 500))
        if state:
            return FileSimulatedProvider(
                str(spec.base / str(state)), clock, spec.name, page_size=page_size
            )
        return SimulatedProvider(SimulatedCloud(clock, page_size=page_size), spec.name)


@dataclass(frozen=True)
class SimulatedHttpTarget(_SimulatedImages):
    """``simulated-http``: the cloud of another process, over its HTTP API."""

    provider_class = HttpSimulatedProvider
    name: str = "simulated-http"
    options: Schema = Schema(
        {"url": Field("http://127.0.0.1:PORT", schema.text(LOCAL_URL), required=True)}
    )

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> HttpSimulatedProvider:
        return HttpSimulatedProvider(str(spec.options["url"]), spec.name)


SIMULATED: Target = SimulatedTarget()  # mypy checks them against the Protocol
SIMULATED_HTTP: Target = SimulatedHttpTarget()
