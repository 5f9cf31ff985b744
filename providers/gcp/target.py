"""The gcp target: a cluster's machines as Compute Engine instances (:mod:`.provider`), booting
images published from ``gcp`` builds (:mod:`.publish`), also by ``provision push gcp``
(:meth:`GcpTarget.push`, a :class:`provision.push.Pusher`). See docs/gcp.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.clock import Clock
from provision.errors import UsageError
from provision.providers.gcp.clients import credentials, gce_clients
from provision.providers.gcp.provider import OPTIONS, PROPERTIES, GcpProvider, create_gcp_provider
from provision.providers.gcp.publish import (
    GcpImage,
    GcpPush,
    check_features,
    find_published,
    look_up,
    publish_gcp,
    storage_client,
)
from provision.providers.gcp.push_command import PUSH_COMMAND
from provision.push import LoadArtifact, PushCommand, PushOptions, PushResult
from provision.reconcile.provider import Instance, Provider
from provision.schema import Schema
from provision.target import Artifact, Progress, PublishedImage, Target, own_provider, read_artifact

if TYPE_CHECKING:
    from provision.reconcile.spec import ProviderSpec


@dataclass(frozen=True)
class GcpTarget:
    name: str = "gcp"
    formats: tuple[str, ...] = ("gcp",)
    push_command: PushCommand = PUSH_COMMAND  # provision push gcp's flags
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

    def publish(
        self, provider: Provider, artifact: Artifact, progress: Progress | None = None
    ) -> PublishedImage:
        gcp = self._own(provider)
        bucket = gcp.options.get("bucket")
        if not bucket:
            raise UsageError(
                f"provider {gcp.name!r}: publishing an image spec needs options.bucket",
                hint="name a Cloud Storage bucket the tarballs are uploaded to (terraform/gcp makes one)",
            )
        push = GcpPush(
            gcp.project,
            str(bucket),
            family=gcp.options.get("family"),
            request_timeout=gcp.request_timeout,
            wait_timeout=gcp.operation_timeout,
        )
        made = publish_gcp(
            artifact,
            push,
            gcp.clients,
            storage_client(gcp.project, credentials(bool(gcp.options.get("anonymous")))),
            progress,
        )
        return PublishedImage(made.image, artifact.digest, made.reused)

    def resolve_image(
        self,
        provider: Provider,
        image: str,
        progress: Progress | None = None,
        *,
        publish: bool = True,
    ) -> str:
        """An image name or URL as given; a build's manifest (``web.manifest.json``) is published
        (with ``publish=False``: the image of its digest if published, else the digest)."""
        if image.endswith(".manifest.json"):
            path = Path(image)
            if not path.is_file():
                raise UsageError(f"{image}: no such build manifest")
            artifact = read_artifact(path, "gcp")
            if not publish:
                return self.find_image(provider, artifact.digest) or artifact.digest
            return self.publish(provider, artifact, progress).id
        return image

    def push(
        self,
        digest: str,
        fmt: str,
        artifact: LoadArtifact,
        options: PushOptions,
        progress: Progress | None = None,
    ) -> PushResult:
        """``provision push gcp``: the image of ``digest`` if there is one (nothing is built or
        uploaded), else ``artifact()`` uploaded and inserted (docs/gcp.md)."""
        if not options.project or not options.bucket:
            raise UsageError("push gcp needs --project and --bucket")
        if options.deprecate_previous and not options.family:
            raise UsageError("--deprecate-previous needs --family")
        if options.anonymous and not options.endpoint:
            raise UsageError("--anonymous is for local stand-ins; it needs --endpoint")
        push = GcpPush(
            options.project,
            options.bucket,
            name=options.name,
            family=options.family,
            guest_os_features=options.guest_os_features,
            storage_location=options.storage_location,
            deprecate_previous=options.deprecate_previous,
            labels=dict(options.labels),
            wait_timeout=options.timeout,
            request_timeout=options.request_timeout,
        )
        if options.guest_os_features is not None:
            check_features(options.guest_os_features)
        creds = credentials(options.anonymous)
        clients = gce_clients(options.endpoint, creds)
        storage = storage_client(options.project, creds)
        found = look_up(clients, storage, push, digest)
        if found.image is not None:
            image = found.image
            made = GcpImage(image.name, image.self_link, image.family or None, True, digest)
            if progress is not None:
                progress(f"image {image.name} is {digest[:19]} already")
        else:
            made = publish_gcp(artifact(), push, clients, storage, progress, found=found)
        return PushResult(
            made.image,
            "",
            options.storage_location or "global",
            made.reused,
            digest,
            made.image,
            details=made.to_json(),
        )

    def consoles(self, provider: Provider, instances: Sequence[Instance]) -> list[str]:
        gcp = self._own(provider)
        return [
            f"gcloud compute instances get-serial-port-output {i.name} --project {gcp.project} --zone {gcp.zone}"
            for i in instances
        ]

    def declared_ports(self, properties: Mapping[str, Any]) -> tuple[int, ...]:
        return ()


GCP_TARGET: Target = GcpTarget()  # mypy checks it against the Protocol
