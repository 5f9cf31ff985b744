"""Parallel, resumable, retried pulls against Debian's docker-registry on 127.0.0.1 behind a
wire-level front that cuts bodies, drops Range headers, delays and answers 429/503."""

from __future__ import annotations

import email.utils
import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from oci_testkit import FaultyFront, Registry, make_client, make_layered_image, tampered_blob

from provision.clock import FakeClock
from provision.errors import DigestMismatchError, RegistryError
from provision.oci.model import Descriptor
from provision.oci.store import ImageStore

pytestmark = pytest.mark.registry


def pushed(registry: Registry, store: ImageStore, name: str, layers: int, size: int) -> str:
    image = make_layered_image(store, name, layers, size, seed=len(name) * layers)
    make_client().push(store, name, f"{registry.host}/{name}")
    return image.digest


def same_blobs(a: ImageStore, b: ImageStore, layers: tuple[Descriptor, ...]) -> bool:
    return all(a.read_blob(d.digest) == b.read_blob(d.digest) for d in layers)


def partials(store: ImageStore) -> list[Path]:
    return sorted((store.root / ".ingest").glob("*.partial"))


def test_parallel_pull_is_correct_and_bounded(
    registry: Registry, faulty_front: FaultyFront, store: ImageStore, tmp_path: Path
) -> None:
    digest = pushed(registry, store, "par:1", layers=8, size=200_000)
    faulty_front.blob_delay = 0.4
    progress: list[tuple[int, int]] = []
    fresh = ImageStore(tmp_path / "fresh")
    image = make_client(parallel=4).pull(
        fresh, f"{faulty_front.host}/par:1", progress=lambda d, t: progress.append((d, t))
    )
    assert image.digest == digest and len(image.layers) == 8
    assert same_blobs(fresh, store, image.layers)
    assert faulty_front.max_inflight == 4
    total = sum(d.size for d in image.layers) + fresh.blob_path(image.config_digest).stat().st_size
    assert progress[-1] == (total, total)
    assert all(d1 <= d2 for (d1, _), (d2, _) in zip(progress, progress[1:], strict=False))

    faulty_front.max_inflight = 0
    serial = make_client(parallel=1).pull(
        ImageStore(tmp_path / "serial"), f"{faulty_front.host}/par:1"
    )
    assert serial.digest == digest and faulty_front.max_inflight == 1


def test_interrupted_download_resumes_with_a_range(
    registry: Registry, faulty_front: FaultyFront, store: ImageStore, tmp_path: Path
) -> None:
    pushed(registry, store, "cut:1", layers=2, size=1_500_000)
    source = store.resolve("cut:1")
    layer = source.layers[1]
    faulty_front.cut_after[layer.digest] = [600_000]
    fresh = ImageStore(tmp_path / "fresh")
    image = make_client().pull(fresh, f"{faulty_front.host}/cut:1")
    assert image.digest == source.digest and same_blobs(fresh, store, image.layers)
    gets = faulty_front.blob_gets(layer.digest)
    assert [(g.range is not None, g.status) for g in gets] == [(False, 200), (True, 206)]
    assert gets[0].sent == 600_000
    # the resumed request asks for what had not arrived whole (the last piece read may be lost)
    start = int(str(gets[1].range).removeprefix("bytes=").removesuffix("-"))
    assert 600_000 - 256 * 1024 <= start <= 600_000 and start > 0
    assert gets[1].sent == layer.size - start
    assert partials(fresh) == []


def test_partial_left_in_the_store_is_resumed(
    registry: Registry, faulty_front: FaultyFront, store: ImageStore, tmp_path: Path
) -> None:
    pushed(registry, store, "left:1", layers=1, size=1_000_000)
    layer = store.resolve("left:1").layers[0]
    fresh = ImageStore(tmp_path / "fresh")
    fresh.ensure_layout()
    half = layer.size // 2
    fresh.partial_path(layer.digest).write_bytes(store.read_blob(layer.digest)[:half])
    make_client().pull(fresh, f"{faulty_front.host}/left:1")
    gets = faulty_front.blob_gets(layer.digest)
    assert [(g.range, g.status, g.sent) for g in gets] == [
        (f"bytes={half}-", 206, layer.size - half)
    ]
    assert fresh.read_blob(layer.digest) == store.read_blob(layer.digest)
    assert partials(fresh) == []


def test_corrupt_partial_is_downloaded_again(
    registry: Registry, faulty_front: FaultyFront, store: ImageStore, tmp_path: Path
) -> None:
    pushed(registry, store, "bad:1", layers=1, size=400_000)
    layer = store.resolve("bad:1").layers[0]
    fresh = ImageStore(tmp_path / "fresh")
    fresh.ensure_layout()
    fresh.partial_path(layer.digest).write_bytes(random.Random(9).randbytes(layer.size // 3))
    make_client().pull(fresh, f"{faulty_front.host}/bad:1")
    gets = faulty_front.blob_gets(layer.digest)
    assert [(g.range is not None, g.status) for g in gets] == [(True, 206), (False, 200)]
    assert fresh.read_blob(layer.digest) == store.read_blob(layer.digest)


def test_registry_without_ranges_starts_over(
    registry: Registry, faulty_front: FaultyFront, store: ImageStore, tmp_path: Path
) -> None:
    pushed(registry, store, "norange:1", layers=1, size=300_000)
    layer = store.resolve("norange:1").layers[0]
    fresh = ImageStore(tmp_path / "fresh")
    fresh.ensure_layout()
    fresh.partial_path(layer.digest).write_bytes(store.read_blob(layer.digest)[:1000])
    faulty_front.strip_range = True
    make_client().pull(fresh, f"{faulty_front.host}/norange:1")
    gets = faulty_front.blob_gets(layer.digest)
    assert [(g.status, g.sent) for g in gets] == [(200, layer.size)]
    assert fresh.read_blob(layer.digest) == store.read_blob(layer.digest)


def test_tampered_blob_is_refused_in_a_parallel_pull(
    registry: Registry, faulty_front: FaultyFront, store: ImageStore, tmp_path: Path
) -> None:
    pushed(registry, store, "evil:1", layers=6, size=100_000)
    source = store.resolve("evil:1")
    bad = source.layers[3]
    with tampered_blob(registry, bad.digest):
        fresh = ImageStore(tmp_path / "fresh")
        with pytest.raises(DigestMismatchError, match=bad.digest):
            make_client(parallel=4).pull(fresh, f"{faulty_front.host}/evil:1")
        assert not fresh.has_blob(bad.digest)
        assert fresh.lookup(f"{faulty_front.host}/evil:1") is None
        assert partials(fresh) == []


def test_429_and_503_with_retry_after_are_waited_out(
    registry: Registry, faulty_front: FaultyFront, store: ImageStore, tmp_path: Path
) -> None:
    digest = pushed(registry, store, "busy:1", layers=3, size=50_000)
    clock = FakeClock()
    date = email.utils.formatdate(clock.now() + 2 + 5, usegmt=True)  # 5 s after the first wait
    faulty_front.transient = [("/manifests/", 503, "2"), ("/blobs/", 429, date)]
    image = make_client(clock=clock).pull(
        ImageStore(tmp_path / "fresh"), f"{faulty_front.host}/busy:1"
    )
    assert image.digest == digest
    assert clock.sleeps == [2.0, 5.0]

    faulty_front.transient = [("/manifests/", 503, "1")] * 10
    with pytest.raises(RegistryError, match=r"HTTP 503 .*after 3 attempts"):
        make_client(clock=clock, attempts=3).pull(
            ImageStore(tmp_path / "other"), f"{faulty_front.host}/busy:1"
        )


def test_two_processes_pulling_one_store_download_each_blob_once(
    registry: Registry, faulty_front: FaultyFront, store: ImageStore, tmp_path: Path
) -> None:
    digest = pushed(registry, store, "shared:1", layers=6, size=150_000)
    faulty_front.blob_delay = 0.5  # the two pulls overlap for a second or more
    shared = tmp_path / "shared"
    env = dict(
        os.environ,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        PROVISION_REGISTRIES=str(tmp_path / "none.yml"),
        DOCKER_CONFIG=str(tmp_path / "docker"),
    )
    argv = [
        sys.executable,
        "-m",
        "provision",
        "cache",
        "--cache",
        str(shared),
        "pull",
        "-q",
        f"{faulty_front.host}/shared:1",
    ]
    pulls = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for pull in pulls:
        out, err = pull.communicate(timeout=120)
        assert pull.returncode == 0, err.decode()
        assert digest in out.decode()
    image = ImageStore(shared).resolve(f"{faulty_front.host}/shared:1")
    assert image.digest == digest and same_blobs(ImageStore(shared), store, image.layers)
    for layer in image.layers:
        assert len(faulty_front.blob_gets(layer.digest)) == 1, layer.digest
    assert partials(ImageStore(shared)) == []


def test_gc_removes_partial_downloads(store: ImageStore) -> None:
    store.ensure_layout()
    partial = store.partial_path("sha256:" + "cd" * 32)
    partial.write_bytes(b"half a blob")
    store.gc()
    assert not partial.exists()


def test_interrupted_manifest_is_fetched_again(
    registry: Registry, faulty_front: FaultyFront, store: ImageStore, tmp_path: Path
) -> None:
    digest = pushed(registry, store, "mcut:2", layers=1, size=10_000)
    faulty_front.cut_after["2"] = [40]  # the manifest GET by tag
    image = make_client().pull(ImageStore(tmp_path / "fresh"), f"{faulty_front.host}/mcut:2")
    assert image.digest == digest
    gets = [s for s in faulty_front.log if s.method == "GET" and s.path.endswith("/manifests/2")]
    assert [g.sent for g in gets][0] == 40 and len(gets) == 2


def _limit_file_size() -> None:
    """In the child: files may not grow past 100 kB (writes then fail with EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_full_disk_is_a_one_line_error(
    registry: Registry, store: ImageStore, tmp_path: Path
) -> None:
    pushed(registry, store, "full:1", layers=1, size=400_000)
    env = dict(
        os.environ,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        PROVISION_REGISTRIES=str(tmp_path / "none.yml"),
        DOCKER_CONFIG=str(tmp_path / "docker"),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "provision",
            "cache",
            "--cache",
            str(tmp_path / "small"),
            "pull",
            "-q",
            f"{registry.host}/full:1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "provision: error: cannot write" in result.stderr and "File too large" in result.stderr


def test_a_download_that_keeps_progressing_is_not_given_up(
    registry: Registry, faulty_front: FaultyFront, store: ImageStore, tmp_path: Path
) -> None:
    """Interruptions after progress start a fresh retry budget: 6 cuts with 3 attempts."""
    pushed(registry, store, "flaky:1", layers=1, size=2_000_000)
    layer = store.resolve("flaky:1").layers[0]
    faulty_front.cut_after[layer.digest] = [300_000] * 6
    fresh = ImageStore(tmp_path / "fresh")
    make_client(attempts=3).pull(fresh, f"{faulty_front.host}/flaky:1")
    assert fresh.read_blob(layer.digest) == store.read_blob(layer.digest)
    gets = faulty_front.blob_gets(layer.digest)
    assert len(gets) == 7 and all(g.range for g in gets[1:])

    # no progress at all: the policy's bound holds
    faulty_front.cut_after[layer.digest] = [0] * 10
    with pytest.raises(RegistryError, match="after 3 attempts"):
        make_client(attempts=3).pull(ImageStore(tmp_path / "other"), f"{faulty_front.host}/flaky:1")
