"""The aws target: EC2 instances for clusters (:mod:`.instances`), and images pushed as EBS
snapshots and AMIs (``provision push aws``, and ``image: web.yml`` in an aws group:
:class:`.publish.AwsPublishing`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision.clock import Clock
from provision.errors import UsageError
from provision.providers.aws.instances import AwsProvider, create_aws_provider
from provision.providers.aws.properties import OPTIONS, PROPERTIES
from provision.providers.aws.publish import FORMATS, AwsPublishing
from provision.providers.aws.push_command import PUSH_COMMAND
from provision.push import PushCommand
from provision.reconcile.provider import Instance, Provider
from provision.reconcile.spec import ProviderSpec
from provision.schema import Schema
from provision.target import Progress, Target

AMI = re.compile(r"ami-[0-9a-f]{8,17}")


@dataclass(frozen=True)
class AwsTarget(AwsPublishing):
    name: str = "aws"
    formats: tuple[str, ...] = FORMATS
    push_command: PushCommand = PUSH_COMMAND  # provision push aws's flags
    options: Schema = OPTIONS
    properties: Schema = PROPERTIES
    tools: tuple[str, ...] = ()

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> AwsProvider:
        return create_aws_provider(spec, clock)

    def resolve_image(
        self,
        provider: Provider,
        image: str,
        progress: Progress | None = None,
        *,
        publish: bool = True,
    ) -> str:
        if not AMI.fullmatch(image):
            raise UsageError(
                f"aws: image {image!r} is not an AMI id (ami-...) or an image spec (.yml)"
            )
        return image

    def consoles(self, provider: Provider, instances: Sequence[Instance]) -> list[str]:
        return [f"aws ec2 get-console-output --instance-id {i.id}" for i in instances]

    def declared_ports(self, properties: Mapping[str, Any]) -> tuple[int, ...]:
        return ()


AWS_TARGET: Target = AwsTarget()  # mypy checks it against the Protocol
