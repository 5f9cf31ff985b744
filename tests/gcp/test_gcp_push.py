"""Publishing a gcp build: resumable upload to the GCS emulator, images.insert on the wire-level
GCE fake through the real google-cloud-compute client, reuse by digest, families."""

from __future__ import annotations

from pathlib import Path

import pytest
from gcp.gce_fake import FakeGce
from gcp.gcp_testkit import BUCKET, PROJECT, Gcs, clients_for, write_artifact

from provision.providers.gcp.publish import GcpPush, publish_gcp
from provision.reconcile.provider import ProviderError


def _push(tmp_path: Path, **kwargs: object) -> GcpPush:
    return GcpPush(PROJECT, BUCKET, sessions=tmp_path / "sessions", chunk=1024 * 1024, **kwargs)  # type: ignore[arg-type]


def test_push_uploads_the_tarball_and_inserts_the_image(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    artifact = write_artifact(tmp_path / "web")
    said: list[str] = []
    made = publish_gcp(
        artifact, _push(tmp_path, family="web"), clients_for(gce), gcs.client(), said.append
    )
    hexdigest = artifact.digest.split(":")[1]
    assert made.image == f"web-{hexdigest[:12]}" and not made.reused and made.family == "web"
    blob = gcs.client().bucket(BUCKET).get_blob(f"provision/{hexdigest}.tar.gz")
    assert blob is not None and blob.download_as_bytes() == artifact.files[0].read_bytes()
    image = clients_for(gce).images.get(project=PROJECT, image=made.image)
    assert image.self_link == made.self_link and image.status == "READY"
    assert (
        image.raw_disk.source
        == f"https://storage.googleapis.com/{BUCKET}/provision/{hexdigest}.tar.gz"
    )
    assert image.architecture == "X86_64" and image.family == "web"
    assert [f.type_ for f in image.guest_os_features] == [
        "UEFI_COMPATIBLE",
        "VIRTIO_SCSI_MULTIQUEUE",
        "GVNIC",
    ]
    assert (
        image.labels["provision-digest"] == hexdigest[:63] and artifact.digest in image.description
    )
    assert any("uploading" in m for m in said)  # progress while sending
    assert gce.count("globalOperations.wait") >= 1  # waited through the configured endpoint


def test_a_second_push_reuses_the_image_and_uploads_nothing(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    artifact = write_artifact(tmp_path / "web")
    first = publish_gcp(artifact, _push(tmp_path), clients_for(gce), gcs.client())
    again = publish_gcp(artifact, _push(tmp_path), clients_for(gce), gcs.client())
    assert again.reused and again.image == first.image and again.uploaded == 0
    assert gce.count("images.insert") == 1 and len(gce.images) == 1


def test_an_object_already_uploaded_with_the_same_checksum_is_not_sent_again(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    artifact = write_artifact(tmp_path / "web")
    hexdigest = artifact.digest.split(":")[1]
    gcs.client().bucket(BUCKET).blob(f"provision/{hexdigest}.tar.gz").upload_from_filename(
        artifact.files[0]
    )
    made = publish_gcp(artifact, _push(tmp_path), clients_for(gce), gcs.client())
    assert made.uploaded == 0 and not made.reused


def test_an_interrupted_upload_resumes_from_its_session(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    artifact = write_artifact(tmp_path / "web", size_mib=4)
    size = artifact.files[0].stat().st_size

    def interrupt(message: str) -> None:
        if message.startswith("uploading: 2 of"):
            raise KeyboardInterrupt  # the user's Ctrl-C after two chunks

    with pytest.raises(KeyboardInterrupt):
        publish_gcp(artifact, _push(tmp_path), clients_for(gce), gcs.client(), interrupt)
    assert gce.count("images.insert") == 0
    said: list[str] = []
    made = publish_gcp(artifact, _push(tmp_path), clients_for(gce), gcs.client(), said.append)
    assert "resuming the upload at 2 of 4 MiB" in said
    assert made.uploaded == size - 2 * 1024 * 1024  # only the rest was sent
    blob = gcs.client().bucket(BUCKET).get_blob(f"provision/{artifact.digest.split(':')[1]}.tar.gz")
    assert blob is not None and blob.download_as_bytes() == artifact.files[0].read_bytes()
    assert not list((tmp_path / "sessions").iterdir())  # the finished session is forgotten


def test_deprecate_previous_marks_the_family_and_deletes_nothing(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    old = publish_gcp(
        write_artifact(tmp_path / "a"),
        _push(tmp_path, family="web"),
        clients_for(gce),
        gcs.client(),
    )
    new = publish_gcp(
        write_artifact(tmp_path / "b"),
        _push(tmp_path, family="web", deprecate_previous=True),
        clients_for(gce),
        gcs.client(),
    )
    images = clients_for(gce).images
    previous = images.get(project=PROJECT, image=old.image)
    assert (
        previous.deprecated.state == "DEPRECATED"
        and previous.deprecated.replacement == new.self_link
    )
    assert not images.get(project=PROJECT, image=new.image).deprecated.state
    assert len(gce.images) == 2


def test_arm64_builds_and_chosen_features_reach_the_image(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    artifact = write_artifact(tmp_path / "a", platform="linux/arm64")
    made = publish_gcp(
        artifact,
        _push(tmp_path, guest_os_features=("GVNIC",), storage_location="eu"),
        clients_for(gce),
        gcs.client(),
    )
    image = clients_for(gce).images.get(project=PROJECT, image=made.image)
    assert image.architecture == "ARM64" and [f.type_ for f in image.guest_os_features] == ["GVNIC"]
    assert list(image.storage_locations) == ["eu"]


def test_a_failed_image_operation_is_reported_with_its_error(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    gce.inject("images.insert.operation", "operation-error")
    with pytest.raises(ProviderError) as caught:
        publish_gcp(write_artifact(tmp_path / "a"), _push(tmp_path), clients_for(gce), gcs.client())
    assert "INVALID_IMAGE_FILE" in (caught.value.hint or "")


def test_the_target_publishes_for_a_group_and_finds_by_digest(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    """What `image: web.yml` in a gcp group does once the spec is built: publish, then find."""
    from provision.clock import SystemClock
    from provision.providers import get_target
    from provision.reconcile.spec import ProviderSpec

    target = get_target("gcp")
    options = {
        "project": PROJECT,
        "zone": "us-central1-a",
        "bucket": BUCKET,
        "family": "web",
        "endpoint": gce.url,
        "anonymous": True,
    }
    provider = target.create_provider(
        ProviderSpec("gce", "gcp", options=options, base=tmp_path), SystemClock()
    )
    artifact = write_artifact(tmp_path / "web")
    assert target.find_image(provider, artifact.digest) is None
    published = target.publish(provider, artifact)
    assert not published.reused and target.find_image(provider, artifact.digest) == published.id
    assert target.publish(provider, artifact).reused
    assert target.resolve_image(provider, str(artifact.manifest), publish=False) == published.id
    assert clients_for(gce).images.get(project=PROJECT, image=published.id).family == "web"
