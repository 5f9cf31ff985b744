"""The local store: references, the OCI layout, blobs, tags, resolution, gc (no network)."""

from __future__ import annotations

import io
import json
import multiprocessing
import random
import tarfile
from pathlib import Path

import pytest
from oci_testkit import make_image

from provision.errors import DigestMismatchError, HostileInputError, ImageNotFoundError
from provision.fsutil import sha256_digest
from provision.oci.imagebuild import LayerEntry, tar_layer_from_entries, write_image, write_index
from provision.oci.model import Descriptor, Platform
from provision.oci.pull import ensure_image
from provision.oci.store import ImageStore
from provision.reference import ImageRef, InvalidReferenceError

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("redis", "docker.io/library/redis:latest"),
        ("redis:7.2", "docker.io/library/redis:7.2"),
        ("linuxkit/init:v1", "docker.io/linuxkit/init:v1"),
        ("docker.io/redis", "docker.io/library/redis:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("127.0.0.1:5000/team/app:1", "127.0.0.1:5000/team/app:1"),
        (f"redis@{DIGEST}", f"docker.io/library/redis@{DIGEST}"),
        (f"ghcr.example/a/b:v2@{DIGEST}", f"ghcr.example/a/b:v2@{DIGEST}"),
    ],
)
def test_references_normalise(text: str, canonical: str) -> None:
    ref = ImageRef.parse(text)
    assert str(ref) == ref.name == canonical
    assert ImageRef.parse(str(ref)) == ref


def test_reference_parts() -> None:
    ref = ImageRef.parse("127.0.0.1:5000/team/app:1")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "127.0.0.1:5000",
        "team/app",
        "1",
        None,
    )
    pinned = ImageRef.parse(f"alpine@{DIGEST}")
    assert pinned.tag is None and pinned.reference == DIGEST


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Redis",
        "redis:",
        "a//b",
        "redis@sha256:abc",
        "x:bad tag",
        "-lead",
        "a:b:c",
        "redis@md5:" + "a" * 32,
        "host:99999999/x",
    ],
)
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        ImageRef.parse(text)
    assert info.value.exit_code == 2


def test_platforms() -> None:
    assert Platform.host() == Platform("linux", "amd64")
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert Platform.parse("linux/arm64/v8").matches(Platform("linux", "arm64"))
    assert not Platform.parse("linux/arm/v7").matches(Platform("linux", "arm", "v6"))
    assert not Platform.parse("linux/amd64").matches(Platform("linux", "arm64"))


def test_store_is_an_oci_layout(store: ImageStore) -> None:
    image = make_image(store, "app:1", {"bin/hello": b"hello"})
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.root / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "docker.io/library/app:1"
    assert entry["digest"] == image.digest
    hexpart = image.digest.split(":")[1]
    blob = store.root / "blobs" / "sha256" / hexpart
    assert sha256_digest(blob.read_bytes()) == image.digest


def test_write_image_is_reproducible(tmp_path: Path) -> None:
    files = {"etc/motd": b"hi\n", "bin/tool": b"\x7fELF" + bytes(range(256)) * 40}
    one = make_image(ImageStore(tmp_path / "a"), "app:1", files, created=1700000000)
    two = make_image(ImageStore(tmp_path / "b"), "other/name:2", files, created=1700000000)
    later = make_image(ImageStore(tmp_path / "c"), "app:1", files, created=1700000001)
    assert one.digest == two.digest
    assert one.digest != later.digest
    assert one.config["created"] == "2023-11-14T22:13:20Z"
    assert one.image_config == {"Cmd": ["/bin/sh"], "Env": ["A=1"]}


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_open_layer_streams_the_uncompressed_tar(store: ImageStore, compression: str) -> None:
    payload = bytes(range(256)) * 4096
    layer = tar_layer_from_entries(
        [("data", None), ("data/blob", payload), LayerEntry.symlink("data/link", "blob")]
    )
    image = write_image(store, "layers:1", [layer], {}, compression=compression)  # type: ignore[arg-type]
    resolved = store.resolve("layers:1")
    assert resolved.layers == image.layers
    with (
        store.open_layer(resolved.layers[0]) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        members = {}
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            members[member.name] = (member.type, handle.read() if handle else member.linkname)
    assert members["data/blob"] == (tarfile.REGTYPE, payload)
    assert members["data/link"] == (tarfile.SYMTYPE, "blob")
    assert resolved.diff_ids == (sha256_digest(layer),)


def test_layer_file_path_is_accepted(store: ImageStore, tmp_path: Path) -> None:
    tar_file = tmp_path / "layer.tar"
    tar_file.write_bytes(tar_layer_from_entries([("f", b"x")]))
    from_file = write_image(store, "f:1", [tar_file], {})
    from_bytes = write_image(store, "f:2", [tar_file.read_bytes()], {})
    assert from_file.digest == from_bytes.digest


def test_write_blob_refuses_content_that_does_not_match(store: ImageStore) -> None:
    wrong = sha256_digest(b"expected content")
    with pytest.raises(DigestMismatchError):
        store.write_blob(io.BytesIO(b"tampered content"), wrong)
    assert not store.has_blob(wrong)
    assert not store.has_blob(sha256_digest(b"tampered content"))
    assert list((store.root / ".ingest").iterdir()) == []
    assert store.write_blob(b"expected content", wrong) == (wrong, 16)
    with pytest.raises(DigestMismatchError):
        store.write_blob(b"short", sha256_digest(b"short"), expected_size=6)


def test_hostile_digests_never_become_paths(store: ImageStore) -> None:
    for bad in ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "md5:abc", "../x"]:
        with pytest.raises(HostileInputError):
            store.blob_path(bad)
    with pytest.raises(HostileInputError):
        Descriptor.from_json({"digest": "sha256:../../x", "size": 1, "mediaType": "x"})


def test_resolve_follows_index_to_the_platform(store: ImageStore) -> None:
    amd = make_image(store, None, {"arch": b"amd64"}, Platform("linux", "amd64"))
    arm = make_image(store, None, {"arch": b"arm64"}, Platform("linux", "arm64", "v8"))
    index = write_index(store, "multi:1", [amd, arm])
    assert store.lookup("multi:1").digest == index.digest  # type: ignore[union-attr]
    assert store.resolve("multi:1", Platform.parse("linux/arm64")).digest == arm.digest
    resolved = store.resolve("multi:1", Platform.parse("linux/amd64"))
    assert resolved.digest == amd.digest and resolved.index_digest == index.digest
    with pytest.raises(ImageNotFoundError, match="s390x"):
        store.resolve("multi:1", Platform.parse("linux/s390x"))
    with pytest.raises(ImageNotFoundError):
        store.resolve("absent:1")
    # a digest-pinned reference resolves from the blobs even without a name
    pinned = store.resolve(f"anything/else@{amd.digest}")
    assert pinned.digest == amd.digest


def test_untag_and_gc_free_unreferenced_blobs(store: ImageStore) -> None:
    keep = make_image(store, "keep:1", {"k": b"keep" * 1000})
    drop = make_image(store, "drop:1", {"d": random.Random(1).randbytes(100_000)})
    assert store.gc() == 0
    assert store.untag("drop:1") and not store.untag("drop:1")
    freed = store.gc()
    assert freed > 100_000
    assert not store.has_blob(drop.digest) and not store.has_blob(drop.layers[0].digest)
    assert store.resolve("keep:1").digest == keep.digest
    assert all(store.has_blob(d.digest) for d in keep.layers)
    assert [e.name for e in store.list_images()] == ["docker.io/library/keep:1"]


def _tag_many(root: str, prefix: str, count: int) -> None:
    store = ImageStore(root)
    digest, size = store.write_blob(b'{"schemaVersion":2}')
    desc = Descriptor("application/vnd.oci.image.manifest.v1+json", digest, size)
    for i in range(count):
        store.tag(f"{prefix}/img:{i}", desc)


def test_concurrent_tags_from_two_processes_lose_nothing(store: ImageStore) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_tag_many, args=(str(store.root), p, 40)) for p in ("a", "b")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    names = {e.name for e in store.list_images()}
    assert len(names) == 80
    assert "docker.io/a/img:39" in names and "docker.io/b/img:0" in names


def test_ensure_image_uses_the_cache_and_never_pulls_when_told(store: ImageStore) -> None:
    image = make_image(store, "cached:1", {"x": b"1"})
    assert ensure_image(store, "cached:1", pull="never").digest == image.digest
    assert ensure_image(store, "cached:1", pull="missing").digest == image.digest
    with pytest.raises(ImageNotFoundError):
        ensure_image(store, "missing:1", pull="never")


def test_partial_download_longer_than_the_blob_starts_over(store: ImageStore) -> None:
    data = random.Random(2).randbytes(5000)
    digest = sha256_digest(data)
    store.ensure_layout()
    store.partial_path(digest).write_bytes(data + b"junk")
    with store.download_blob(digest, len(data)) as download:
        assert download is not None and download.offset == 0
        download.write(data[:1000])
    # kept for the next try, which resumes at byte 1000 and verifies the whole blob
    with store.download_blob(digest, len(data)) as download:
        assert download is not None and download.offset == download.inherited == 1000
        with pytest.raises(DigestMismatchError, match="larger than"):
            download.write(data[1000:] + b"x")
        download.write(data)
        download.commit()
    assert store.read_blob(digest) == data and not store.partial_path(digest).exists()
    with store.download_blob(digest, len(data)) as download:
        assert download is None  # stored: nothing to download
