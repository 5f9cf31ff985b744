"""The metal target: machines of a lab's inventory, powered through their BMCs, network-booted
by ``provision serve`` with the image published into its state directory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision.clock import Clock
from provision.errors import UsageError
from provision.providers.metal.images import DIGEST, publish_boot_image, read_boot_image
from provision.providers.metal.provider import (
    OPTIONS,
    PROPERTIES,
    MetalProvider,
    create_metal_provider,
)
from provision.reconcile.provider import Instance, Provider
from provision.reconcile.spec import ProviderSpec
from provision.schema import Schema
from provision.target import Artifact, Progress, PublishedImage, Target, own_provider


@dataclass(frozen=True)
class MetalTarget:
    name: str = "metal"
    formats: tuple[str, ...] = ("kernel+initrd",)
    options: Schema = OPTIONS
    properties: Schema = PROPERTIES
    tools: tuple[str, ...] = ()

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> MetalProvider:
        return create_metal_provider(spec, clock)

    def find_image(self, provider: Provider, digest: str) -> str | None:
        metal = own_provider(provider, MetalProvider, self.name)
        return digest if read_boot_image(metal.state, digest) is not None else None

    def publish(
        self, provider: Provider, artifact: Artifact, progress: Progress | None = None
    ) -> PublishedImage:
        metal = own_provider(provider, MetalProvider, self.name)
        reused = publish_boot_image(metal.state, artifact)
        if not reused and progress is not None:
            progress(f"published {artifact.digest[:19]} for network boot in {metal.state}")
        return PublishedImage(artifact.digest, artifact.digest, reused)

    def resolve_image(
        self,
        provider: Provider,
        image: str,
        progress: Progress | None = None,
        *,
        publish: bool = True,
    ) -> str:
        metal = own_provider(provider, MetalProvider, self.name)
        if DIGEST.fullmatch(image) and read_boot_image(metal.state, image) is not None:
            return image
        raise UsageError(
            f"image {image!r} is not published in {metal.state}",
            hint="give the group an image spec (.yml): it is built and published",
        )

    def consoles(self, provider: Provider, instances: Sequence[Instance]) -> list[str]:
        return []

    def declared_ports(self, properties: Mapping[str, Any]) -> tuple[int, ...]:
        return ()


METAL_TARGET: Target = MetalTarget()  # mypy checks it against the Protocol
