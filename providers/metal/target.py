"""The metal target: machines of a lab's inventory, powered through their BMCs, network-booted
by ``provision serve`` with the image published into its state directory (as kernel+initrd,
and as a raw disk when machines of the lab have a local disk to install it on)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision.builders.disk import disk_tools
from provision.clock import Clock
from provision.errors import UsageError
from provision.providers.metal.images import (
    DIGEST,
    disk_image_path,
    publish_boot_image,
    publish_disk_image,
    read_boot_image,
)
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
    tools: tuple[str, ...] = disk_tools("bios")  # a disk image for machines with a local disk

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> MetalProvider:
        return create_metal_provider(spec, clock)

    def find_image(self, provider: Provider, digest: str) -> str | None:
        metal = own_provider(provider, MetalProvider, self.name)
        if read_boot_image(metal.state, digest) is None:
            return None
        if _wants_disk(metal) and disk_image_path(metal.state, digest, metal.disk_layout) is None:
            return None  # built again from the cache, and its disk published
        return digest

    def publish(
        self, provider: Provider, artifact: Artifact, progress: Progress | None = None
    ) -> PublishedImage:
        metal = own_provider(provider, MetalProvider, self.name)
        reused = publish_boot_image(metal.state, artifact)
        if not reused and progress is not None:
            progress(f"published {artifact.digest[:19]} for network boot in {metal.state}")
        if _wants_disk(metal):
            layout = metal.disk_layout
            if not publish_disk_image(metal.state, artifact, layout):
                reused = False
                if progress is not None:
                    progress(
                        f"published {artifact.digest[:19]} as a {layout.firmware} disk "
                        f"({layout.boot_mib} MiB boot, {layout.data_mib} MiB provision-data)"
                    )
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


def _wants_disk(metal: MetalProvider) -> bool:
    """Whether any machine of the lab has a local disk (then images are published as disks too)."""
    return any(m.disk for m in metal.lab().machines)


METAL_TARGET: Target = MetalTarget()  # mypy checks it against the Protocol
