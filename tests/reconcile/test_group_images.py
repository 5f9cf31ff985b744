"""A group whose ``image`` is an image spec, for every target: ``plan`` computes the digest and
builds nothing; ``apply`` builds the target's format once per digest, publishes it through the
target and launches the published id. Real builds, from a private store of small images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from build.build_testkit import SPEC, write_test_images

from provision.clock import FakeClock
from provision.image_digest import plan_image_digest
from provision.oci.store import ImageStore
from provision.providers.simulated.persistence import load_cloud
from provision.reconcile.image import GroupImage, GroupImages
from provision.reconcile.registry import create_providers
from provision.reconcile.spec import GroupSpec, load_cluster_spec

REPO = Path(__file__).resolve().parents[2]

CLUSTER = """\
cluster: imgs
journal: journal.db
providers:
  sim: {type: simulated, options: {state: cloud.json}}
  local: {type: qemu, options: {stateRoot: qemu-state}}
groups:
  - name: web
    provider: sim
    image: specs/machine.yml
    size: 2
"""
QEMU_GROUP = """\
  - name: vm
    provider: local
    image: specs/machine.yml
    size: 0
"""


def _tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size: what a user would compare before and after."""
    return {
        str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    store = ImageStore(tmp_path / "oci")
    write_test_images(store)
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "machine.yml").write_text(SPEC)
    (tmp_path / "cluster.yml").write_text(CLUSTER + QEMU_GROUP)
    return tmp_path


def provision(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PROVISION_CACHE": str(workdir / "oci"),
        "PROVISION_ARTIFACTS": str(workdir / "artifacts"),
        "SOURCE_DATE_EPOCH": "",
    }
    env.pop("SOURCE_DATE_EPOCH")
    return subprocess.run(
        [sys.executable, "-m", "provision", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
        env=env,
    )


def test_plan_builds_nothing_and_shows_the_digest_it_will_build(workdir: Path) -> None:
    digest = plan_image_digest([workdir / "specs/machine.yml"], ImageStore(workdir / "oci"))
    before = _tree(workdir)
    result = provision(workdir, "plan", "cluster.yml", "--detailed-exitcode")
    assert result.returncode == 2, result.stderr
    assert f"image: will build {digest} (specs/machine.yml)" in result.stdout
    assert result.stdout.count("will build") == 2  # both groups, qemu's too
    after = _tree(workdir)
    new = set(after) - set(before)
    assert {k: v for k, v in after.items() if k in before} == before  # the store is unchanged
    assert all(name.startswith("journal.db") for name in new), (
        new
    )  # no build, no qemu cache, no cloud


def test_apply_builds_once_publishes_by_digest_and_launches_the_published_id(workdir: Path) -> None:
    (workdir / "cluster.yml").write_text(CLUSTER)  # the simulated group only (qemu would boot)
    digest = plan_image_digest([workdir / "specs/machine.yml"], ImageStore(workdir / "oci"))
    applied = provision(workdir, "apply", "cluster.yml", "--interval", "0.1")
    assert applied.returncode == 0, applied.stderr
    assert (
        f"building {workdir / 'specs/machine.yml'} as kernel+initrd ({digest[:19]})"
        in applied.stderr
    )
    cloud = load_cloud(str(workdir / "cloud.json"))
    image_id = cloud.find_image(digest)
    assert image_id is not None and image_id.startswith("img-")
    machines = cloud.live({"provision-cluster": "imgs"})
    assert len(machines) == 2 and {m.image for m in machines} == {image_id}
    manifests = [
        p
        for p in (workdir / "artifacts").rglob("*.manifest.json")
        if not p.parent.name.startswith(".")
    ]  # not the build's generation directory
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["image_digest"] == digest
    built_at = manifests[0].stat().st_mtime_ns

    again = provision(workdir, "plan", "cluster.yml", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"image={image_id}" in again.stdout and "will build" not in again.stdout
    reapplied = provision(workdir, "apply", "cluster.yml")
    assert reapplied.returncode == 0 and "building" not in reapplied.stderr
    assert manifests[0].stat().st_mtime_ns == built_at  # the build was not made twice
    assert len(load_cloud(str(workdir / "cloud.json")).images()) == 1


def test_the_qemu_target_publishes_a_built_image_into_its_cache_once(workdir: Path) -> None:
    spec = load_cluster_spec(workdir / "cluster.yml")
    providers = create_providers(spec, FakeClock())
    store = ImageStore(workdir / "oci")
    group = spec.group("vm")
    planned = GroupImages(
        spec, providers, build=False, store=store, artifacts=workdir / "artifacts"
    ).image(group)
    assert planned.pending and not (workdir / "qemu-state").exists()
    built = GroupImages(
        spec, providers, build=True, store=store, artifacts=workdir / "artifacts"
    ).image(group)
    assert built.id == planned.digest and not built.pending
    cached = workdir / "qemu-state" / "images" / planned.id.removeprefix("sha256:")
    assert (cached / "machine-kernel").is_file() and (cached / "machine-initrd.img").is_file()
    assert json.loads((cached / "image.json").read_text())["digest"] == planned.id
    replanned = GroupImages(
        spec, providers, build=False, store=store, artifacts=workdir / "artifacts"
    ).image(group)
    assert replanned.id == planned.id and not replanned.pending  # published: plan knows it


def test_a_built_artifact_is_only_digested_by_a_plan_and_cached_by_apply(workdir: Path) -> None:
    from cluster_e2e.standin import write_standin

    prefix = write_standin(workdir / "out", "v1")
    (workdir / "cluster.yml").write_text(
        CLUSTER + QEMU_GROUP.replace("specs/machine.yml", "out/standin")
    )
    spec = load_cluster_spec(workdir / "cluster.yml")
    providers = create_providers(spec, FakeClock())
    group = spec.group("vm")
    planned = GroupImages(spec, providers, build=False, artifacts=workdir / "artifacts").image(
        group
    )
    assert (
        planned.id.startswith("sha256:") and not (workdir / "qemu-state").exists()
    )  # nothing copied
    applied = GroupImages(spec, providers, build=True, artifacts=workdir / "artifacts").image(group)
    assert applied.id == planned.id
    cached = workdir / "qemu-state" / "images" / planned.id.removeprefix("sha256:")
    assert (cached / "standin-initrd.img").read_bytes() == (
        prefix.parent / "standin-initrd.img"
    ).read_bytes()


def test_a_resolution_in_flight_when_the_spec_changes_is_not_kept_for_the_new_spec(
    workdir: Path,
) -> None:
    """A resync swaps the spec while a pass is still resolving the group's old image: the
    next pass must launch the new image (it used to keep the old one cached until the spec
    changed again, so that group silently never rolled out)."""
    resolving, go_on = threading.Event(), threading.Event()

    class SlowForImg1(GroupImages):
        def _resolve(self, group: GroupSpec) -> GroupImage:
            if group.image == "img-1":
                resolving.set()
                assert go_on.wait(10)
            return super()._resolve(group)

    (workdir / "cluster.yml").write_text(CLUSTER.replace("specs/machine.yml", "img-1"))
    old_spec = load_cluster_spec(workdir / "cluster.yml")
    (workdir / "cluster.yml").write_text(CLUSTER.replace("specs/machine.yml", "img-2"))
    new_spec = load_cluster_spec(workdir / "cluster.yml")
    providers = create_providers(old_spec, FakeClock())
    images = SlowForImg1(old_spec, providers, build=True, artifacts=workdir / "artifacts")
    got: list[str] = []
    in_flight = threading.Thread(target=lambda: got.append(images.image(old_spec.group("web")).id))
    in_flight.start()
    assert resolving.wait(10)
    images.spec = new_spec  # what the daemon's resync does with a changed spec
    images.clear()
    go_on.set()
    in_flight.join(10)
    assert got == ["img-1"]  # the pass that began before the change used its own spec
    assert images.image(new_spec.group("web")).id == "img-2"
    assert images.image(old_spec.group("web")).id == "img-1"  # a stale group never poisons it
    assert images.image(new_spec.group("web")).id == "img-2"


def test_the_daemon_rolls_out_an_edited_image_spec_at_its_next_resync(workdir: Path) -> None:
    """Only the image spec changes (cluster.yml stays as it was): the daemon's next resync
    builds and publishes the new digest and replaces the group's machines with it."""
    (workdir / "cluster.yml").write_text(CLUSTER)
    store = ImageStore(workdir / "oci")
    machine = workdir / "specs/machine.yml"
    first = plan_image_digest([machine], store)
    env = {**os.environ, "PROVISION_CACHE": str(workdir / "oci")}
    env["PROVISION_ARTIFACTS"] = str(workdir / "artifacts")
    log = (workdir / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "provision", "daemon", "cluster.yml", "--listen", "127.0.0.1:0"]
        + ["--interval", "0.1", "--resync", "0.5"],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )

    def runs_only(digest: str) -> bool:
        """Both machines run the image published for ``digest``, and nothing else runs."""
        cloud = load_cloud(str(workdir / "cloud.json"))
        image = cloud.find_image(digest)
        live = [m.image for m in cloud.live({"provision-cluster": "imgs"})]
        return image is not None and live == [image, image]

    def wait(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 120
        while not predicate():
            assert daemon.poll() is None, (workdir / "daemon.log").read_text()
            assert time.monotonic() < deadline, f"{what}: {(workdir / 'daemon.log').read_text()}"
            time.sleep(0.2)

    try:
        wait(lambda: runs_only(first), "v1 up")
        machine.write_text(machine.read_text().replace('contents: "hello\\n"', 'contents: "v2\\n"'))
        second = plan_image_digest([machine], store)
        assert second != first
        wait(lambda: runs_only(second), "the edited image spec rolled out")
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()
    assert daemon.returncode == 0
