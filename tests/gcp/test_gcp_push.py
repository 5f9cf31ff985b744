"""Publishing a gcp build: resumable upload to the GCS emulator, images.insert on the wire-level
GCE fake through the real google-cloud-compute client, reuse by digest, families."""

from __future__ import annotations

import os
from pathlib import Path

import google_crc32c
import pytest
from gcp.gce_fake import FakeGce, serve_fake_gce
from gcp.gcp_testkit import BUCKET, PROJECT, Gcs, clients_for, write_artifact

from provision.providers.gcp.publish import Found, GcpPush, look_up, object_name, publish_gcp
from provision.providers.gcp.upload import ChunkBody, StoredObject, file_crc32c
from provision.push import ProgressLine
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


def _bytes_read() -> int:
    """Bytes this process has read so far (files and sockets, every thread)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_push_reads_the_file_once_while_it_is_sent(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    """The CRC32C is computed over the blocks as they go out: no pass over the file before."""
    warm = write_artifact(tmp_path / "warm", size_mib=1)
    publish_gcp(
        warm, GcpPush(PROJECT, BUCKET, sessions=tmp_path / "s"), clients_for(gce), gcs.client()
    )
    artifact = write_artifact(tmp_path / "web", size_mib=6)
    size = artifact.files[0].stat().st_size
    said: list[str] = []
    before = _bytes_read()
    made = publish_gcp(
        artifact,
        GcpPush(PROJECT, BUCKET, sessions=tmp_path / "s"),  # one chunk (100 MiB)
        clients_for(gce),
        gcs.client(),
        said.append,
    )
    read = _bytes_read() - before
    assert made.uploaded == size and size <= read < size + size // 2, (read, size)
    assert any(isinstance(m, ProgressLine) and "gs://" in m for m in said)  # within the chunk
    blob = gcs.client().bucket(BUCKET).get_blob(object_name(artifact.digest))
    assert blob is not None and blob.download_as_bytes() == artifact.files[0].read_bytes()


def test_a_chunk_sent_again_is_the_same_bytes_and_checksum(tmp_path: Path) -> None:
    """A request sent again (a credentials refresh) passes over its body again: from the start."""
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        start = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
        start.update(data[:100])  # type: ignore[no-untyped-call]
        body = ChunkBody(fd, 100, len(data) - 100, start)
        passes = []
        for _ in range(2):
            passes.append(b"".join(iter(lambda: body.read(16384), b"")))
            assert body.checksum is not None
            assert body.checksum.digest() == google_crc32c.Checksum(data).digest()  # type: ignore[no-untyped-call]
        assert passes == [data[100:], data[100:]] and len(body) == len(data) - 100
    finally:
        os.close(fd)


def test_an_operation_done_when_returned_is_not_polled(tmp_path: Path, gcs: Gcs) -> None:
    with serve_fake_gce(gcs.url, polls=0) as fake:
        made = publish_gcp(
            write_artifact(tmp_path / "a"), _push(tmp_path), clients_for(fake), gcs.client()
        )
        assert fake.count("images.insert") == 1 and fake.count("globalOperations.wait") == 0
        assert made.self_link.endswith(f"/global/images/{made.image}")


def test_look_up_finds_the_image_and_the_object_of_a_digest(
    tmp_path: Path, gcs: Gcs, gce: FakeGce
) -> None:
    artifact = write_artifact(tmp_path / "web")
    push = _push(tmp_path)
    nothing = look_up(clients_for(gce), gcs.client(), push, artifact.digest)
    assert nothing == Found(None, None)
    made = publish_gcp(artifact, push, clients_for(gce), gcs.client())
    found = look_up(clients_for(gce), gcs.client(), push, artifact.digest)
    assert found.image is not None and found.image.name == made.image
    assert found.stored == StoredObject(
        artifact.files[0].stat().st_size, file_crc32c(artifact.files[0])
    )


def test_a_chunk_resent_after_a_credentials_refresh_is_whole(tmp_path: Path) -> None:
    """google-auth's AuthorizedSession answers a 401 by refreshing the token and sending the
    request again with the same body: the chunk goes out again from its start."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from google.auth.credentials import Credentials
    from google.auth.transport.requests import AuthorizedSession

    class Refreshing(Credentials):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.token = "expired"

        def refresh(self, request: object) -> None:
            self.token = "fresh"

    received: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Authorization"], body))
            self.send_response(401 if self.headers["Authorization"] == "Bearer expired" else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data = os.urandom(2 * 1024 * 1024 + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        body = ChunkBody(fd, 0, len(data), google_crc32c.Checksum())  # type: ignore[no-untyped-call]
        answer = AuthorizedSession(Refreshing()).put(
            f"http://127.0.0.1:{server.server_address[1]}/upload", data=body, timeout=30
        )
    finally:
        os.close(fd)
        server.shutdown()
        server.server_close()
    assert answer.status_code == 200
    assert received == [("Bearer expired", data), ("Bearer fresh", data)]
    assert body.checksum is not None
    assert body.checksum.digest() == google_crc32c.Checksum(data).digest()  # type: ignore[no-untyped-call]
