"""``push_azure`` end to end: Azurite holds the blob, the fake ARM server the images, the real
azure-storage-blob and azure-mgmt-compute clients talk to both. Results are read back through
the API (the fake's resources, the blob's page ranges)."""

from __future__ import annotations

from pathlib import Path

import pytest
from arm_testkit import GROUP, LOCATION, SUBSCRIPTION, Arm
from azurite_testkit import Azurite
from vhd_testkit import write_vhd

from provision.clock import FakeClock
from provision.providers.azure.blob import PAGE, written_ranges
from provision.providers.azure.errors import AzurePublishError
from provision.providers.azure.images import DIGEST_TAG
from provision.providers.azure.push import AzurePush, AzurePushResult, parse_replicas, push_azure
from provision.retry import RetryPolicy
from provision.target import Artifact

HEX = "cd" * 32


def _artifact(tmp_path: Path, hexdigest: str = HEX) -> Artifact:
    vhd = write_vhd(tmp_path / f"web-{hexdigest[:4]}.vhd", 32, [0, 20])
    return Artifact("web", "sha256:" + hexdigest, "vhd", (vhd,), tmp_path / "web.manifest.json")


def _push(**overrides: object) -> AzurePush:
    fields: dict[str, object] = {
        "resource_group": GROUP,
        "storage_account": "devstoreaccount1",
        "container": "images",
        "location": LOCATION,
    }
    fields.update(overrides)
    return AzurePush(**fields)


def _puts(arm: Arm) -> list[str]:
    return [path for method, path in arm.fake.requests if method == "PUT"]


def test_a_managed_image_is_made_from_the_blob_and_a_second_push_reuses_it(
    arm: Arm, azurite: Azurite, tmp_path: Path
) -> None:
    container = azurite.new_container("managed")
    artifact = _artifact(tmp_path)
    said: list[str] = []
    first = push_azure(artifact, _push(), arm.clients(), container, progress=said.append)
    assert not first.reused and first.pages_sent == 3 and first.bytes_sent == 2 * PAGE + 512
    image = arm.fake.get(first.image_id)
    assert (
        image is not None
        and first.image_id == f"{arm.group_id()}/providers/Microsoft.Compute/images/web-{HEX[:12]}"
    )
    assert image["tags"][DIGEST_TAG] == HEX and image["location"] == LOCATION
    assert image["properties"]["hyperVGeneration"] == "V2"
    assert image["properties"]["storageProfile"]["osDisk"] == {
        "osType": "Linux",
        "osState": "Generalized",
        "blobUri": first.blob_url,
        "caching": "ReadWrite",
    }
    assert image["properties"]["provisioningState"] == "Succeeded"
    blob = container.get_blob_client(first.blob_url.rsplit("/", 1)[1])
    assert blob.download_blob().readall() == artifact.files[0].read_bytes()
    assert any("uploaded" in line for line in said)

    puts = len(_puts(arm))
    again = push_azure(artifact, _push(name="another-name"), arm.clients(), container)
    assert again.reused and again.image_id == first.image_id and again.pages_sent == 0
    assert len(_puts(arm)) == puts  # nothing created
    assert again.as_json() == {
        "image_id": first.image_id,
        "blob_url": first.blob_url,
        "reused": True,
        "replicas": {LOCATION: 1},
    }


def test_a_gallery_version_gets_a_definition_with_the_features_asked_for(
    arm: Arm, azurite: Azurite, tmp_path: Path
) -> None:
    container = azurite.new_container("gallery")
    artifact = _artifact(tmp_path)
    push = _push(
        gallery="provisiongallery",
        gallery_image="web",
        version="1.0.0",
        security_type="TrustedLaunch",
        replicas=parse_replicas("northeurope=2"),
    )
    made = push_azure(artifact, push, arm.clients(), container)
    gallery_id = f"{arm.group_id()}/providers/Microsoft.Compute/galleries/provisiongallery"
    assert made.image_id == f"{gallery_id}/images/web/versions/1.0.0" and not made.reused
    definition = arm.fake.get(f"{gallery_id}/images/web")
    assert definition is not None
    assert {
        k: definition["properties"][k]
        for k in ("osType", "osState", "hyperVGeneration", "architecture")
    } == {
        "osType": "Linux",
        "osState": "Generalized",
        "hyperVGeneration": "V2",
        "architecture": "x64",
    }
    assert definition["properties"]["features"] == [
        {"name": "SecurityType", "value": "TrustedLaunch"}
    ]
    version = arm.fake.get(made.image_id)
    assert version is not None and version["tags"][DIGEST_TAG] == HEX
    props = version["properties"]
    assert props["publishingProfile"]["targetRegions"] == [
        {"name": "northeurope", "regionalReplicaCount": 2},
        {"name": LOCATION, "regionalReplicaCount": 1},
    ]
    assert props["storageProfile"]["osDiskImage"]["source"] == {
        "uri": made.blob_url,
        "storageAccountId": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}"
        "/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
    }
    assert made.replicas == {"northeurope": 2, LOCATION: 1}

    again = push_azure(
        artifact,
        _push(
            gallery="provisiongallery",
            gallery_image="web",
            version="1.0.1",
            security_type="TrustedLaunch",
        ),
        arm.clients(),
        container,
    )
    assert again.reused and again.image_id == made.image_id  # found by digest, not by version
    assert arm.fake.get(f"{gallery_id}/images/web/versions/1.0.1") is None

    other = _artifact(tmp_path, "ef" * 32)
    with pytest.raises(AzurePublishError, match="holds another image"):
        push_azure(other, push, arm.clients(), container)
    with pytest.raises(
        AzurePublishError, match="hyperVGeneration is 'V2', not 'V1'.*security type"
    ):
        push_azure(
            other,
            _push(
                gallery="provisiongallery",
                gallery_image="web",
                version="2.0.0",
                hyper_v_generation="V1",
            ),
            arm.clients(),
            container,
        )


def test_throttling_is_waited_out_as_azure_asks(arm: Arm, azurite: Azurite, tmp_path: Path) -> None:
    arm.fake.fail("PUT", "images", 429, "TooManyRequests", retry_after=7)
    arm.fake.fail("PUT", "images", 503)
    clock = FakeClock()
    policy = RetryPolicy(attempts=5, total=60, clock=clock)
    made = push_azure(
        _artifact(tmp_path), _push(), arm.clients(), azurite.new_container("throttle"), retry=policy
    )
    assert arm.fake.get(made.image_id) is not None
    assert clock.now() - 1_700_000_000.0 >= 7  # the Retry-After was honoured, not skipped
    assert len([p for p in _puts(arm) if "/images/" in p]) == 3


def test_a_refusal_is_not_retried_and_says_what_azure_said(
    arm: Arm, azurite: Azurite, tmp_path: Path
) -> None:
    arm.fake.fail("PUT", "images", 403, "AuthorizationFailed")
    with pytest.raises(
        AzurePublishError, match="403 AuthorizationFailed: injected fault"
    ) as caught:
        push_azure(_artifact(tmp_path), _push(), arm.clients(), azurite.new_container("refused"))
    assert "role" in (caught.value.hint or "")
    assert len([p for p in _puts(arm) if "/images/" in p]) == 1


def test_a_long_running_operation_is_waited_on_with_a_bound(
    arm: Arm, azurite: Azurite, tmp_path: Path
) -> None:
    arm.fake.polls = 10**9
    with pytest.raises(AzurePublishError, match=r"still InProgress after 0.5 s") as caught:
        push_azure(
            _artifact(tmp_path), _push(timeout=0.5), arm.clients(), azurite.new_container("slow")
        )
    assert "rerun" in (caught.value.hint or "")


def test_the_blob_is_uploaded_once_even_when_the_registration_failed(
    arm: Arm, azurite: Azurite, tmp_path: Path
) -> None:
    container = azurite.new_container("twice")
    arm.fake.fail("PUT", "images", 400, "InvalidParameter")
    with pytest.raises(AzurePublishError):
        push_azure(_artifact(tmp_path), _push(), arm.clients(), container)
    again = push_azure(_artifact(tmp_path), _push(), arm.clients(), container)
    assert not again.reused and again.pages_sent == 0 and again.bytes_sent == 0
    blob = container.get_blob_client(again.blob_url.rsplit("/", 1)[1])
    assert written_ranges(blob)[0] == (0, PAGE)


def test_trusted_launch_from_a_managed_image_is_refused_before_any_call(
    arm: Arm, tmp_path: Path, azurite: Azurite
) -> None:
    from provision.errors import UsageError

    with pytest.raises(UsageError, match="cannot boot managed images"):
        push_azure(
            _artifact(tmp_path),
            _push(security_type="TrustedLaunch"),
            arm.clients(),
            azurite.new_container("trusted"),
        )
    assert arm.fake.requests == []
    with pytest.raises(UsageError, match="REGION=N"):
        parse_replicas("eastus")
    assert isinstance(AzurePushResult("i", "b", False, {}).as_json(), dict)


def test_an_arm64_build_gets_an_arm64_definition(
    arm: Arm, azurite: Azurite, tmp_path: Path
) -> None:
    artifact = _artifact(tmp_path)
    artifact.manifest.write_text('{"platform": "linux/arm64"}')
    made = push_azure(
        artifact,
        _push(gallery="g", gallery_image="web-arm", version="1.0.0"),
        arm.clients(),
        azurite.new_container("arm64"),
    )
    definition = arm.fake.get(made.image_id.rsplit("/versions/", 1)[0])
    assert definition is not None and definition["properties"]["architecture"] == "Arm64"


def test_the_shared_push_options_mean_what_azure_calls_them() -> None:
    from provision.errors import UsageError
    from provision.providers.azure.push import push_settings
    from provision.push import PushOptions

    base = {"region": LOCATION, "resource_group": GROUP, "storage_account": "a", "container": "c"}
    settings = push_settings(
        PushOptions(
            **base,
            tpm=True,
            gallery="g",
            gallery_image="web",
            version="1.0.0",
            copy_to=("eastus",),
            replicas={"northeurope": 3},
            concurrency=4,
        )
    )
    assert settings.security_type == "TrustedLaunch" and settings.hyper_v_generation == "V2"
    assert settings.replicas == {"eastus": 1, "northeurope": 3} and settings.workers == 4
    assert push_settings(PushOptions(**base, boot_mode="legacy-bios")).hyper_v_generation == "V1"
    with pytest.raises(UsageError, match="needs --location, --resource-group"):
        push_settings(PushOptions())
    with pytest.raises(UsageError, match="need --gallery"):
        push_settings(PushOptions(**base, copy_to=("eastus",)))
