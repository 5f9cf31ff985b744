"""The aws target: images pushed as EBS snapshots and AMIs (``provision push aws``, and
``image: web.yml`` in an aws cluster group: :class:`.publish.AwsPublishing`), machines as EC2
instances (the cluster provider).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision.errors import UsageError
from provision.providers.aws.publish import FORMATS, AwsPublishing
from provision.reconcile.clock import Clock
from provision.reconcile.provider import Instance, Provider
from provision.reconcile.spec import ProviderSpec
from provision.schema import Schema
from provision.target import Progress

# --- the cluster provider (RunInstances, DescribeInstances, TerminateInstances) ---------------
# Comes with the provider's own change (instances.py, properties.py): OPTIONS, PROPERTIES,
# create_aws_provider, resolve_image and consoles. Until then a cluster spec of type aws loads
# with open schemas and cannot create machines.
OPTIONS = Schema(open=True)
PROPERTIES = Schema(open=True)


def create_aws_provider(spec: ProviderSpec, clock: Clock) -> Provider:
    raise UsageError("the aws cluster provider is not part of this build yet")
# --- end of the cluster provider section ------------------------------------------------------


@dataclass(frozen=True)
class AwsTarget(AwsPublishing):
    name: str = "aws"
    formats: tuple[str, ...] = FORMATS
    options: Schema = OPTIONS
    properties: Schema = PROPERTIES
    tools: tuple[str, ...] = ()

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> Provider:
        return create_aws_provider(spec, clock)

    def resolve_image(self, provider: Provider, image: str, progress: Progress | None = None) -> str:
        if not image.startswith("ami-"):
            raise UsageError(f"image {image!r}: an aws group's image is an image spec (.yml) or an AMI id (ami-...)")
        return image

    def consoles(self, provider: Provider, instances: Sequence[Instance]) -> list[str]:
        return []

    def declared_ports(self, properties: Mapping[str, Any]) -> tuple[int, ...]:
        return ()


AWS_TARGET = AwsTarget()
