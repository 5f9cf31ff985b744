"""Pull and push against a real registry (Debian's docker-registry on 127.0.0.1)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import requests
from oci_testkit import (
    PASSWORD,
    USER,
    Registry,
    TokenFront,
    free_port,
    make_client,
    make_image,
    tampered_blob,
)

from provision.errors import DigestMismatchError, ImageNotFoundError, RegistryError
from provision.oci.auth import Credentials, CredentialStore
from provision.oci.config import load_registry_config
from provision.oci.imagebuild import write_index
from provision.oci.model import Platform
from provision.oci.pull import ensure_image
from provision.oci.registry import RegistryClient
from provision.oci.store import ImageStore

pytestmark = pytest.mark.registry


def test_push_then_pull_gives_the_same_image(
    registry: Registry, store: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    payload = random.Random(7).randbytes(200_000)
    image = make_image(store, "app:1", {"bin/app": payload, "etc/conf": b"x=1\n"})
    pushed: list[tuple[int, int]] = []
    digest = client.push(
        store, "app:1", f"{registry.host}/team/app:1", progress=lambda d, t: pushed.append((d, t))
    )
    assert digest == image.digest
    assert pushed[-1][0] == pushed[-1][1] > 200_000

    fresh = ImageStore(tmp_path / "fresh")
    pulled: list[tuple[int, int]] = []
    result = client.pull(
        fresh, f"{registry.host}/team/app:1", progress=lambda d, t: pulled.append((d, t))
    )
    assert result.digest == image.digest
    assert result.name == f"{registry.host}/team/app:1"
    assert result.image_config == {"Cmd": ["/bin/sh"], "Env": ["A=1"]}
    assert (
        pulled[-1][0]
        == pulled[-1][1]
        == sum(d.size for d in image.layers) + len(fresh.read_blob(image.config_digest))
    )
    assert fresh.read_blob(result.layers[0].digest) == store.read_blob(image.layers[0].digest)

    # by digest, into yet another store
    other = ImageStore(tmp_path / "other")
    by_digest = client.pull(other, f"{registry.host}/team/app@{image.digest}")
    assert by_digest.digest == image.digest
    # pushing again uploads nothing new: every blob is found by HEAD
    again: list[tuple[int, int]] = []
    client.push(
        store, "app:1", f"{registry.host}/team/app:1", progress=lambda d, t: again.append((d, t))
    )
    assert again[-1][0] == again[-1][1]


def test_multi_arch_index_pulls_only_the_chosen_platform(
    registry: Registry, store: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    amd = make_image(store, None, {"arch": b"amd64" * 100}, Platform("linux", "amd64"))
    arm = make_image(store, None, {"arch": b"arm64" * 100}, Platform("linux", "arm64", "v8"))
    index = write_index(store, "multi:1", [amd, arm])
    assert client.push(store, "multi:1", f"{registry.host}/multi:1") == index.digest

    fresh = ImageStore(tmp_path / "fresh")
    arm_image = client.pull(fresh, f"{registry.host}/multi:1", Platform.parse("linux/arm64"))
    assert arm_image.digest == arm.digest and arm_image.platform.architecture == "arm64"
    assert arm_image.index_digest == index.digest
    assert not fresh.has_blob(amd.digest) and not fresh.has_blob(amd.layers[0].digest)
    # the cache knows the index but not amd64 yet; ensure_image pulls what is missing
    with pytest.raises(ImageNotFoundError):
        fresh.resolve(f"{registry.host}/multi:1", Platform.parse("linux/amd64"))
    amd_image = ensure_image(
        fresh, f"{registry.host}/multi:1", Platform.parse("linux/amd64"), client=client
    )
    assert amd_image.digest == amd.digest
    with pytest.raises(ImageNotFoundError, match="riscv64"):
        client.pull(fresh, f"{registry.host}/multi:1", Platform.parse("linux/riscv64"))


def test_tampered_blob_is_refused(
    registry: Registry, store: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    image = make_image(store, "tamper:1", {"file": random.Random(3).randbytes(50_000)})
    client.push(store, "tamper:1", f"{registry.host}/tamper:1")
    with tampered_blob(registry, image.layers[0].digest):
        fresh = ImageStore(tmp_path / "fresh")
        with pytest.raises(DigestMismatchError):
            client.pull(fresh, f"{registry.host}/tamper:1")
        assert not fresh.has_blob(image.layers[0].digest)
        assert fresh.lookup(f"{registry.host}/tamper:1") is None


def test_chunked_upload(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    client = make_client()
    client.chunk_size = 64 * 1024
    image = make_image(store, "big:1", {"blob": random.Random(5).randbytes(300_000)})
    assert image.layers[0].size > 4 * client.chunk_size
    client.push(store, "big:1", f"{registry.host}/chunked/big:1")
    pulled = make_client().pull(ImageStore(tmp_path / "fresh"), f"{registry.host}/chunked/big:1")
    assert pulled.digest == image.digest


def test_basic_auth_from_docker_config(
    basic_registry: Registry, store: ImageStore, tmp_path: Path
) -> None:
    make_image(store, "secret:1", {"s": b"classified"})
    target = f"{basic_registry.host}/private/secret:1"
    with pytest.raises(RegistryError, match="user name and password"):
        make_client().push(store, "secret:1", target)
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    import base64
    import json

    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    client = RegistryClient(
        config=load_registry_config({}),
        credentials=CredentialStore(env={"DOCKER_CONFIG": str(config.parent)}),
    )
    client.push(store, "secret:1", target)
    pulled = client.pull(ImageStore(tmp_path / "fresh"), target)
    assert pulled.name == target
    wrong = make_client({basic_registry.host: Credentials(USER, "wrong")})
    with pytest.raises(RegistryError):
        wrong.pull(ImageStore(tmp_path / "wrong"), target)


def test_bearer_token_flow(token_front: TokenFront, store: ImageStore, tmp_path: Path) -> None:
    image = make_image(store, "tok:1", {"t": b"token"})
    target = f"{token_front.host}/bearer/tok:1"
    with pytest.raises(RegistryError, match="denied pull,push access to bearer/tok anonymously"):
        make_client().push(store, "tok:1", target)
    make_client({token_front.host: Credentials(USER, PASSWORD)}).push(store, "tok:1", target)
    requested = [s for q in token_front.token_requests for s in q.get("scope", [])]
    assert "repository:bearer/tok:pull,push" in requested
    # anonymous pull is allowed by this front
    pulled = make_client().pull(ImageStore(tmp_path / "fresh"), target)
    assert pulled.digest == image.digest
    with pytest.raises(RegistryError, match="refused the credentials"):
        make_client({token_front.host: Credentials(USER, "nope")}).pull(
            ImageStore(tmp_path / "x"), target
        )


def test_docker_io_goes_through_the_configured_mirror(
    registry: Registry, store: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    image = make_image(store, "mirrored:1", {"m": b"mirror"})
    client.push(store, "mirrored:1", f"{registry.host}/library/mirrored:1")
    dead = f"http://127.0.0.1:{free_port()}"
    mirror_client = make_client(mirrors={"docker.io": (dead, registry.url)})
    pulled = mirror_client.pull(ImageStore(tmp_path / "fresh"), "mirrored:1")
    assert pulled.digest == image.digest
    assert pulled.name == "docker.io/library/mirrored:1"
    config = load_registry_config(
        {
            "PROVISION_REGISTRY_MIRRORS": f"docker.io={dead},{registry.url}",
            "PROVISION_INSECURE_REGISTRIES": "build.lan:5000",
            "PROVISION_REGISTRIES": str(tmp_path / "none.yml"),
        }
    )
    assert config.mirrors == {"docker.io": (dead, registry.url)}
    assert config.is_insecure("build.lan:5000") and not config.is_insecure("build.lan:5001")


def test_plain_http_only_for_loopback_or_insecure(registry: Registry, tmp_path: Path) -> None:
    remote = make_client(endpoints={"registry.test": f"http://192.0.2.1:{free_port()}"})
    with pytest.raises(RegistryError, match="refusing plain http"):
        remote.pull(ImageStore(tmp_path / "s"), "registry.test/app:1")
    assert make_client().base_url("registry.test:5000") == "https://registry.test:5000"
    assert make_client().base_url(registry.host) == registry.url


def test_pull_policies(
    registry: Registry, store: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    first = make_image(store, "policy:1", {"v": b"1"})
    client.push(store, "policy:1", f"{registry.host}/policy:1")
    cache = ImageStore(tmp_path / "cache")
    ref = f"{registry.host}/policy:1"
    assert ensure_image(cache, ref, client=client).digest == first.digest
    second = make_image(store, "policy:1", {"v": b"2"})
    client.push(store, "policy:1", ref)
    assert ensure_image(cache, ref, pull="missing", client=client).digest == first.digest
    assert ensure_image(cache, ref, pull="always", client=client).digest == second.digest
    # a pinned digest in the cache is never pulled again, even with "always"
    dead = make_client(endpoints={registry.host: f"http://127.0.0.1:{free_port()}"})
    pinned = f"{registry.host}/policy@{first.digest}"
    pinned_cache = ImageStore(tmp_path / "pinned")
    with pytest.raises(RegistryError):
        ensure_image(pinned_cache, pinned, pull="always", client=dead)
    client.pull(pinned_cache, pinned)
    assert ensure_image(pinned_cache, pinned, pull="always", client=dead).digest == first.digest
    # the cache already holding those blobs under a tag also satisfies the pinned digest
    assert ensure_image(cache, pinned, pull="always", client=dead).digest == first.digest


def test_unknown_image_is_not_found(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    with pytest.raises(ImageNotFoundError):
        client.pull(ImageStore(tmp_path / "s"), f"{registry.host}/nothing/here:1")
    assert requests.get(f"{registry.url}/v2/", timeout=5).status_code == 200
