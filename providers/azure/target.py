"""The azure target: VMs in one resource group, booted from images published from fixed VHDs
(a managed image, or a Compute Gallery version when ``gallery`` is set)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.credentials import TokenCredential

from provision.clock import Clock
from provision.errors import UsageError
from provision.providers.azure.clients import arm_clients, blob_container
from provision.providers.azure.images import find_registered
from provision.providers.azure.provider import OPTIONS, PROPERTIES, AzureProvider
from provision.providers.azure.push import (
    AzurePush,
    image_request,
    push_azure,
    push_digest,
    push_settings,
)
from provision.providers.azure.push_command import PUSH_COMMAND
from provision.push import LoadArtifact, PushCommand, PushOptions, PushResult
from provision.reconcile.provider import Instance, Provider
from provision.reconcile.spec import ProviderSpec
from provision.schema import Schema
from provision.target import Artifact, Progress, PublishedImage, Target, own_provider

_GALLERY_VERSION = "0.0.{n}"


def create_azure_provider(
    spec: ProviderSpec, credential: TokenCredential | None = None
) -> AzureProvider:
    options = spec.options
    arm = arm_clients(str(options["subscriptionId"]), credential, options.get("endpoint"))
    return AzureProvider(
        spec.name,
        arm,
        str(options["resourceGroup"]),
        str(options["location"]),
        dict(options),
        delete_timeout=float(options.get("deleteTimeout", 600.0)),
    )


def _push_settings(provider: AzureProvider, artifact: Artifact | None) -> AzurePush:
    options = provider.options
    version = None
    if options.get("gallery"):
        # gallery versions are MAJOR.MINOR.PATCH: the digest's first 31 bits keep them unique and stable
        hexdigest = artifact.digest.removeprefix("sha256:") if artifact else "0" * 8
        version = _GALLERY_VERSION.format(n=int(hexdigest[:8], 16) >> 1)
    return AzurePush(
        resource_group=provider.resource_group,
        storage_account=str(options.get("storageAccount", "")),
        container=str(options.get("container", "images")),
        location=provider.location,
        gallery=options.get("gallery"),
        gallery_image=options.get("galleryImage") or (artifact.name if artifact else None),
        version=version,
        storage_resource_group=options.get("storageResourceGroup"),
    )


@dataclass(frozen=True)
class AzureTarget:
    name: str = "azure"
    formats: tuple[str, ...] = ("vhd",)
    push_command: PushCommand = PUSH_COMMAND  # provision push azure's flags
    options: Schema = OPTIONS
    properties: Schema = PROPERTIES
    tools: tuple[str, ...] = ()

    def push(
        self,
        digest: str,
        fmt: str,
        artifact: LoadArtifact,
        options: PushOptions,
        progress: Progress | None = None,
    ) -> PushResult:
        """``provision push azure`` (provision/push.py): the blob, then the image; by digest."""
        settings = push_settings(options)
        subscription = options.subscription or os.environ.get("AZURE_SUBSCRIPTION_ID")
        if not subscription:
            raise UsageError(
                "no subscription", hint="give --subscription or set AZURE_SUBSCRIPTION_ID"
            )
        arm = arm_clients(subscription, timeout=options.request_timeout)
        container = blob_container(settings.storage_account, settings.container)
        result = push_digest(digest, artifact, settings, arm, container, progress=progress)
        name = result.image_id.rstrip("/").rsplit("/", 1)[-1]
        return PushResult(
            result.image_id,
            "",
            settings.location,
            result.reused,
            digest,
            name,
            details={"blob_url": result.blob_url, "replicas": dict(result.replicas)},
        )

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> AzureProvider:
        return create_azure_provider(spec)

    def find_image(self, provider: Provider, digest: str) -> str | None:
        azure = own_provider(provider, AzureProvider, self.name)
        settings = _push_settings(azure, None)
        if settings.gallery and not settings.gallery_image:
            return None  # the definition is named after the build: unknown before it
        unbuilt = Artifact("image", digest, "vhd", (), Path("-"))
        return find_registered(
            azure.arm, image_request(settings, unbuilt, azure.arm.subscription), digest
        )

    def publish(
        self, provider: Provider, artifact: Artifact, progress: Progress | None = None
    ) -> PublishedImage:
        azure = own_provider(provider, AzureProvider, self.name)
        settings = _push_settings(azure, artifact)
        if not settings.storage_account:
            raise UsageError(
                f"provider {azure.name}: publishing an image needs options.storageAccount",
                hint="or give the group an image id (/subscriptions/.../images/NAME)",
            )
        container = blob_container(settings.storage_account, settings.container)
        result = push_azure(artifact, settings, azure.arm, container, progress=progress)
        return PublishedImage(result.image_id, artifact.digest, result.reused)

    def resolve_image(
        self,
        provider: Provider,
        image: str,
        progress: Progress | None = None,
        *,
        publish: bool = True,
    ) -> str:
        if image.startswith("/subscriptions/") and "/providers/Microsoft.Compute/" in image:
            return image
        raise UsageError(
            f"image {image!r} is not an Azure image id",
            hint="give /subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/images/NAME, "
            "a gallery version id, or an image spec (.yml)",
        )

    def consoles(self, provider: Provider, instances: Sequence[Instance]) -> list[str]:
        return [f"az vm boot-diagnostics get-boot-log --ids {i.id}" for i in instances]

    def declared_ports(self, properties: Mapping[str, Any]) -> tuple[int, ...]:
        return ()


AZURE_TARGET: Target = AzureTarget()  # mypy checks it against the Protocol
