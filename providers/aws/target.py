"""The aws target: images pushed as EBS snapshots and AMIs (``provision push aws``, and
``image: web.yml`` in an aws cluster group), machines as EC2 instances.

The publish side (push, find_image, publish) is :mod:`.publish`; the cluster provider
(RunInstances, options and properties schemas) goes in the marked section below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision.errors import UsageError
from provision.push import LoadArtifact, PushOptions, PushResult
from provision.reconcile.clock import Clock
from provision.reconcile.provider import Instance, Provider
from provision.reconcile.spec import ProviderSpec
from provision.schema import Schema
from provision.target import Artifact, Progress, PublishedImage

# --- the cluster provider (RunInstances, DescribeInstances, TerminateInstances) ---------------
# Filled in by the provider's own change: OPTIONS, PROPERTIES and create_aws_provider. Until
# then a cluster spec of type aws loads with open schemas and cannot create machines.
OPTIONS = Schema(open=True)
PROPERTIES = Schema(open=True)


def create_aws_provider(spec: ProviderSpec, clock: Clock) -> Provider:
    raise UsageError("the aws cluster provider is not part of this build yet")


def provider_region(provider: Provider) -> str | None:
    """The region a provider of this target works in (its ``options.region``)."""
    inner: Any = provider
    while not hasattr(inner, "region") and hasattr(inner, "inner"):
        inner = inner.inner
    region = getattr(inner, "region", None)
    return str(region) if region else None
# --- end of the cluster provider section ------------------------------------------------------


@dataclass(frozen=True)
class AwsTarget:
    name: str = "aws"
    formats: tuple[str, ...] = ("aws", "raw-efi", "raw-bios")
    options: Schema = OPTIONS
    properties: Schema = PROPERTIES
    tools: tuple[str, ...] = ()

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> Provider:
        return create_aws_provider(spec, clock)

    def push(self, digest: str, artifact: LoadArtifact, options: PushOptions,
             progress: Progress | None = None) -> PushResult:
        from provision.providers.aws.publish import push_to_aws

        return push_to_aws(digest, artifact, options, progress)

    def find_image(self, provider: Provider, digest: str) -> str | None:
        from provision.providers.aws.publish import find_published

        return find_published(digest, provider_region(provider))

    def publish(self, provider: Provider, artifact: Artifact, progress: Progress | None = None) -> PublishedImage:
        result = self.push(artifact.digest, lambda: artifact, PushOptions(region=provider_region(provider)), progress)
        return PublishedImage(result.image_id, artifact.digest, result.reused)

    def resolve_image(self, provider: Provider, image: str, progress: Progress | None = None) -> str:
        if not image.startswith("ami-"):
            raise UsageError(f"image {image!r}: an aws group's image is an image spec (.yml) or an AMI id (ami-...)")
        return image

    def consoles(self, provider: Provider, instances: Sequence[Instance]) -> list[str]:
        return []

    def declared_ports(self, properties: Mapping[str, Any]) -> tuple[int, ...]:
        return ()


AWS_TARGET = AwsTarget()
