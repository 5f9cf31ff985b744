"""The gcp target: a cluster's machines as Compute Engine instances (:mod:`.provider`), booting
images published from ``gcp`` builds (:mod:`.publish`). See docs/gcp.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import UsageError
from provision.providers.gcp.clients import credentials
from provision.providers.gcp.provider import OPTIONS, PROPERTIES, GcpProvider, create_gcp_provider
from provision.providers.gcp.publish import GcpPush, find_published, publish_gcp, storage_client
from provision.reconcile.clock import Clock
from provision.reconcile.provider import Instance, Provider
from provision.reconcile.spec import ProviderSpec
from provision.schema import Schema
from provision.target import Artifact, Progress, PublishedImage, own_provider, read_artifact


@dataclass(frozen=True)
class GcpTarget:
    name: str = "gcp"
    formats: tuple[str, ...] = ("gcp",)
    options: Schema = OPTIONS
    properties: Schema = PROPERTIES
    tools: tuple[str, ...] = ()

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> GcpProvider:
        return create_gcp_provider(spec, clock)

    def _own(self, provider: Provider) -> GcpProvider:
        return own_provider(provider, GcpProvider, self.name)

    def find_image(self, provider: Provider, digest: str) -> str | None:
        gcp = self._own(provider)
        found = find_published(gcp.clients, gcp.project, digest, gcp.request_timeout)
        return None if found is None else found.name

    def publish(self, provider: Provider, artifact: Artifact, progress: Progress | None = None) -> PublishedImage:
        gcp = self._own(provider)
        bucket = gcp.options.get("bucket")
        if not bucket:
            raise UsageError(f"provider {gcp.name!r}: publishing an image spec needs options.bucket",
                             hint="name a Cloud Storage bucket the tarballs are uploaded to (terraform/gcp makes one)")
        push = GcpPush(gcp.project, str(bucket), family=gcp.options.get("family"),
                       request_timeout=gcp.request_timeout, wait_timeout=gcp.operation_timeout)
        made = publish_gcp(artifact, push, gcp.clients, storage_client(gcp.project, credentials(bool(gcp.options.get("anonymous")))),
                           progress)
        return PublishedImage(made.image, artifact.digest, made.reused)

    def resolve_image(self, provider: Provider, image: str, progress: Progress | None = None) -> str:
        """An image name or URL as given; a build's manifest (``web.manifest.json``) is published."""
        if image.endswith(".manifest.json"):
            path = Path(image)
            if not path.is_file():
                raise UsageError(f"{image}: no such build manifest")
            return self.publish(provider, read_artifact(path, "gcp"), progress).id
        return image

    def consoles(self, provider: Provider, instances: Sequence[Instance]) -> list[str]:
        gcp = self._own(provider)
        return [f"gcloud compute instances get-serial-port-output {i.name} --project {gcp.project} --zone {gcp.zone}"
                for i in instances]

    def declared_ports(self, properties: Mapping[str, Any]) -> tuple[int, ...]:
        return ()


GCP_TARGET = GcpTarget()
