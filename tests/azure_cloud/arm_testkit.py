"""The fake ARM server as a fixture, and the real SDK clients pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from azure_cloud.fake_arm import TOKEN, FakeArm, serve_fake_arm

from provision.providers.azure.clients import ArmClients, StaticTokenCredential, arm_clients

SUBSCRIPTION = "00000000-0000-4000-8000-000000000001"
GROUP = "rg-provision"
LOCATION = "westeurope"


@dataclass
class Arm:
    fake: FakeArm
    url: str

    def clients(self, token: str = TOKEN) -> ArmClients:
        return arm_clients(SUBSCRIPTION, StaticTokenCredential(token), self.url, timeout=5)

    def group_id(self) -> str:
        return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}"


@pytest.fixture
def arm() -> Iterator[Arm]:
    fake = FakeArm(polls=2)
    server, url = serve_fake_arm(fake)
    try:
        yield Arm(fake, url)
    finally:
        server.shutdown()
        server.server_close()
