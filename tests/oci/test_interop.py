"""Interoperability with skopeo and umoci: the store is a plain OCI layout, pushes and pulls
speak the same distribution API as everyone else."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from oci_testkit import Registry, make_image

from provision.oci.archive import export_archive, import_archive
from provision.oci.registry import RegistryClient
from provision.oci.store import ImageStore

pytestmark = pytest.mark.registry


def skopeo(tmp_path: Path, *args: str) -> str:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (apt-get install skopeo, see scripts/setup.sh)")
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    result = subprocess.run(
        ["skopeo", "--policy", str(policy), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_skopeo_copies_what_provision_pushed(
    registry: Registry, store: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    image = make_image(store, "interop:1", {"bin/tool": random.Random(2).randbytes(30_000)})
    client.push(store, "interop:1", f"{registry.host}/pushed/interop:1")
    layout = tmp_path / "skopeo-layout"
    skopeo(
        tmp_path,
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/pushed/interop:1",
        f"oci:{layout}:copied",
    )
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.digest
    # and provision reads the layout skopeo wrote, names as skopeo wrote them
    assert ImageStore(layout).resolve("copied").digest == image.digest
    info = json.loads(
        skopeo(
            tmp_path, "inspect", "--tls-verify=false", f"docker://{registry.host}/pushed/interop:1"
        )
    )
    assert info["Digest"] == image.digest and info["Env"] == ["A=1"]


def test_provision_pulls_what_skopeo_pushed(
    registry: Registry, store: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    # skopeo reads provision's store directly as an OCI layout and pushes from it
    image = make_image(store, "fromskopeo:1", {"etc/name": b"skopeo"})
    skopeo(
        tmp_path,
        "copy",
        "--dest-tls-verify=false",
        f"oci:{store.root}:docker.io/library/fromskopeo:1",
        f"docker://{registry.host}/skopeo/pushed:7",
    )
    fresh = ImageStore(tmp_path / "fresh")
    pulled = client.pull(fresh, f"{registry.host}/skopeo/pushed:7")
    assert pulled.config_digest == image.config_digest
    assert [d.digest for d in pulled.layers] == [d.digest for d in image.layers]


def test_provision_pulls_docker_schema2_images(
    registry: Registry, store: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    make_image(store, "v2s2:1", {"etc/format": b"docker"})
    skopeo(
        tmp_path,
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        f"oci:{store.root}:docker.io/library/v2s2:1",
        f"docker://{registry.host}/docker/v2s2:1",
    )
    pulled = client.pull(ImageStore(tmp_path / "fresh"), f"{registry.host}/docker/v2s2:1")
    assert pulled.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    (layer,) = pulled.layers
    assert layer.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    fresh = ImageStore(tmp_path / "fresh")
    with fresh.open_layer(layer) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        names = {member.name: member for member in tar}
    assert "etc/format" in names


def test_umoci_unpacks_an_image_from_the_store(store: ImageStore, tmp_path: Path) -> None:
    if shutil.which("umoci") is None:
        pytest.fail("umoci is not installed (apt-get install umoci, see scripts/setup.sh)")
    make_image(store, "127.0.0.1:5000/team/unpack:1", {"bin/hello": b"#!/bin/sh\necho hi\n"})
    bundle = tmp_path / "bundle"
    result = subprocess.run(
        [
            "umoci",
            "unpack",
            "--rootless",
            "--image",
            f"{store.root}:127.0.0.1:5000/team/unpack:1",
            str(bundle),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (bundle / "rootfs/bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["/bin/sh"]


def test_archives_interoperate_with_skopeo(store: ImageStore, tmp_path: Path) -> None:
    image = make_image(store, "arch:1", {"a": b"archive"})
    ours = export_archive(store, ["arch:1"], tmp_path / "ours.tar")
    info = json.loads(skopeo(tmp_path, "inspect", f"oci-archive:{ours}:docker.io/library/arch:1"))
    assert info["Digest"] == image.digest
    theirs = tmp_path / "theirs.tar"
    skopeo(
        tmp_path,
        "copy",
        f"oci:{store.root}:docker.io/library/arch:1",
        f"oci-archive:{theirs}:example.test/imported/arch:9",
    )
    fresh = ImageStore(tmp_path / "fresh")
    (imported,) = import_archive(fresh, theirs)
    assert imported.name == "example.test/imported/arch:9"
    assert fresh.resolve("example.test/imported/arch:9").digest == image.digest
