"""The azure target as the reconcile engine uses it: made from a cluster spec's options through
the registry, ``publish`` of a build (gallery version named from the digest), ``find_image``
by digest for ``provision plan``, ``resolve_image`` of ids."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from arm_testkit import GROUP, LOCATION, SUBSCRIPTION, Arm
from azurite_testkit import Azurite
from vhd_testkit import write_vhd

from provision.clock import SystemClock
from provision.errors import UsageError
from provision.providers import get_target
from provision.reconcile.spec import ProviderSpec
from provision.target import Artifact

TOKEN = "target-token"


@pytest.fixture
def environment(azurite: Azurite) -> Iterator[None]:
    """What a user of these stand-ins exports: a bearer token and the storage connection string."""
    saved = {
        k: os.environ.get(k) for k in ("PROVISION_AZURE_TOKEN", "AZURE_STORAGE_CONNECTION_STRING")
    }
    os.environ["PROVISION_AZURE_TOKEN"] = TOKEN
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_publish_find_and_resolve_through_the_target(
    arm: Arm, azurite: Azurite, environment: None, tmp_path: Path
) -> None:
    arm.fake.token = TOKEN
    azurite.new_container("targetimages")
    target = get_target("azure")
    options = {
        "subscriptionId": SUBSCRIPTION,
        "resourceGroup": GROUP,
        "location": LOCATION,
        "endpoint": arm.url,
        "storageAccount": "devstoreaccount1",
        "container": "targetimages",
        "gallery": "g",
        "galleryImage": "web",
    }
    provider = target.create_provider(
        ProviderSpec("az", "azure", options=options, base=tmp_path), SystemClock()
    )
    digest = "sha256:" + "0f" * 32
    artifact = Artifact(
        "web", digest, "vhd", (write_vhd(tmp_path / "web.vhd", 8, [1]),), tmp_path / "m.json"
    )
    assert target.find_image(provider, digest) is None
    said: list[str] = []
    published = target.publish(provider, artifact, said.append)
    version = int("0f0f0f0f", 16) >> 1
    assert (
        published.id.endswith(f"/galleries/g/images/web/versions/0.0.{version}")
        and not published.reused
    )
    assert arm.fake.get(published.id) is not None and said
    assert target.find_image(provider, digest) == published.id
    again = target.publish(provider, artifact)
    assert again.reused and again.id == published.id
    assert target.resolve_image(provider, published.id) == published.id
    with pytest.raises(UsageError, match="not an Azure image id"):
        target.resolve_image(provider, "web")
    bare = target.create_provider(
        ProviderSpec(
            "az", "azure", options={k: v for k, v in options.items() if k != "storageAccount"}
        ),
        SystemClock(),
    )
    with pytest.raises(UsageError, match="needs options.storageAccount"):
        target.publish(
            bare, Artifact("web", "sha256:" + "1" * 64, "vhd", artifact.files, artifact.manifest)
        )
