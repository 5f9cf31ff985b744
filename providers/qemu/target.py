"""The qemu target: a cluster's machines as local QEMU VMs (:mod:`.provider`), booting images
published into the local image cache (:mod:`.images`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.clock import Clock
from provision.errors import UsageError
from provision.providers.qemu.accel import QEMU
from provision.providers.qemu.images import (
    DIGEST,
    digest_artifact,
    find_cached_image,
    image_cache,
    import_artifact,
    publish_files,
    resolve_cached_image,
)
from provision.providers.qemu.provider import (
    OPTIONS,
    PROPERTIES,
    QemuProvider,
    create_qemu_provider,
    parse_machine_properties,
)
from provision.providers.qemu.state import SERIAL_LOG, vm_dir
from provision.reconcile.provider import Instance, Provider
from provision.reconcile.spec import ProviderSpec
from provision.schema import Schema
from provision.target import Artifact, Progress, PublishedImage, Target, own_provider


def _bootable_formats() -> tuple[str, ...]:
    """kernel+initrd first (what a group's image spec is built as), then every format QEMU boots."""
    from provision.builders.formats import WRITERS

    bootable = [writer.name for writer in WRITERS if writer.boot is not None]
    return ("kernel+initrd", *(f for f in bootable if f != "kernel+initrd"))


@dataclass(frozen=True)
class QemuTarget:
    name: str = "qemu"
    options: Schema = OPTIONS
    properties: Schema = PROPERTIES
    tools: tuple[str, ...] = (QEMU,)

    @property
    def formats(self) -> tuple[str, ...]:
        return _bootable_formats()

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> QemuProvider:
        return create_qemu_provider(spec, clock)

    def _cache(self, provider: Provider) -> Path:
        return image_cache(own_provider(provider, QemuProvider, self.name).state_root)

    def find_image(self, provider: Provider, digest: str) -> str | None:
        return find_cached_image(self._cache(provider), digest)

    def publish(
        self, provider: Provider, artifact: Artifact, progress: Progress | None = None
    ) -> PublishedImage:
        """Copy the artifact's files and its manifest into the image cache under the image digest."""
        cache = self._cache(provider)
        if find_cached_image(cache, artifact.digest) is None and progress is not None:
            progress(f"caching {artifact.name} ({artifact.format}) as {artifact.digest[:19]}")
        reused = publish_files(
            [*artifact.files, artifact.manifest],
            cache,
            artifact.digest,
            artifact.manifest.name,
            str(artifact.manifest.resolve()),
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
        """An image digest already in the cache, or the path of a built artifact (cached under
        the sha256 of what boots; ``publish=False`` only computes that digest)."""
        qemu = own_provider(provider, QemuProvider, self.name)
        if DIGEST.fullmatch(image):
            resolve_cached_image(qemu.state_root, image)
            return image
        path = Path(image) if os.path.isabs(image) else qemu.base / image
        if not publish:
            return digest_artifact(path)[0]
        return import_artifact(path, image_cache(qemu.state_root), progress=progress)

    def consoles(self, provider: Provider, instances: Sequence[Instance]) -> list[str]:
        root = own_provider(provider, QemuProvider, self.name).state_root
        return [str(vm_dir(root, i.id) / SERIAL_LOG) for i in instances]

    def declared_ports(self, properties: Mapping[str, Any]) -> tuple[int, ...]:
        try:
            props = parse_machine_properties(properties)
        except UsageError:
            return ()
        return tuple(guest for guest, proto in props.ports if proto == "tcp")


QEMU_TARGET: Target = QemuTarget()  # mypy checks it against the Protocol
