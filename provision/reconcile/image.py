"""Turning a group's ``image`` into the id its provider launches, for every target alike.

``image`` is either the path of an image spec (``web.yml``) or anything else the group's target
understands (an AMI id, a simulated image name, a qemu image digest or built artifact: the
target's ``resolve_image``).

For an image spec, :class:`GroupImages` works in one of two modes:

* **plan** (``build=False``): nothing is assembled, built or uploaded. The image digest is
  computed from the spec, its input images' manifest digests and its ``files`` sources
  (:func:`provision.image_digest.plan_image_digest`); when the target has that digest published
  already (``find_image``) its id is used, otherwise the digest stands in for the id and the
  plan notes ``image: will build sha256:... (web.yml)``;
* **apply** (``build=True``, what ``apply``, ``up`` and the daemon use): the spec is built in
  the target's first format into the artifact cache (``artifacts/<digest hex>/<format>/``, once
  per digest), published through the target (idempotent by digest), and the published id is
  launched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from provision.errors import ProvisionError
from provision.oci.store import ImageStore
from provision.providers import get_target
from provision.reconcile.provider import Provider
from provision.reconcile.spec import ClusterSpec, GroupSpec
from provision.target import Artifact, read_artifact

Progress = Callable[[str], None]


def is_image_spec_path(image: str) -> bool:
    return Path(image).suffix in (".yml", ".yaml")


def default_artifact_cache() -> Path:
    """``$PROVISION_ARTIFACTS``, else ``$XDG_CACHE_HOME/provision/artifacts``, else
    ``~/.cache/provision/artifacts``: builds of group images, one directory per digest."""
    explicit = os.environ.get("PROVISION_ARTIFACTS")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "provision" / "artifacts"


@dataclass(frozen=True)
class GroupImage:
    """A group's image: the id to launch, and for an image spec its digest and whether it
    still has to be built and published (only in plan mode)."""

    id: str
    source: str
    digest: str | None = None
    pending: bool = False

    def note(self) -> str | None:
        if self.pending:
            return f"image: will build {self.digest} ({self.source})"
        return None


class GroupImages:
    """Each group's :class:`GroupImage`, resolved once per group and image (``clear`` forgets
    them, as every resync does). ``fixed`` maps group names to ids given by
    the caller (nothing resolved).

    A pass may be resolving a group's image while a resync swaps the spec and clears: that
    resolution was of the old spec, so it is used for its own pass only and never cached over
    the new one (the cache is keyed by the group's provider and image, and a resolution started
    before a ``clear`` is not kept)."""

    def __init__(
        self,
        spec: ClusterSpec,
        providers: Mapping[str, Provider],
        *,
        build: bool,
        store: ImageStore | None = None,
        artifacts: Path | None = None,
        progress: Progress | None = None,
        fixed: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.providers = providers
        self.build = build
        self._store = store
        self.artifacts = artifacts or default_artifact_cache()
        self.progress = progress
        self.fixed = dict(fixed or {})
        self._resolved: dict[tuple[str, str, str], GroupImage] = {}
        self._generation = 0  # bumped by clear(): a resolution started before it is not kept
        self._lock = threading.Lock()

    @property
    def store(self) -> ImageStore:
        if self._store is None:
            self._store = ImageStore.default()
        return self._store

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._resolved.clear()

    def image(self, group: GroupSpec) -> GroupImage:
        key = (group.name, group.provider, group.image)
        found = self._resolved.get(key)
        if found is None:
            generation = self._generation
            found = self._resolve(group)
            with self._lock:
                if generation == self._generation:
                    self._resolved[key] = found
        return found

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def _resolve(self, group: GroupSpec) -> GroupImage:
        if group.name in self.fixed:
            return GroupImage(self.fixed[group.name], group.image)
        pspec = self.spec.providers[group.provider]
        target = get_target(pspec.type)
        provider = self.providers[group.provider]
        if not is_image_spec_path(group.image):
            image_id = target.resolve_image(
                provider, group.image, self.progress, publish=self.build
            )
            return GroupImage(image_id, group.image)
        from provision.image_digest import plan_image_digest

        path = (pspec.base / group.image).resolve()
        if not path.is_file():
            raise ProvisionError(f"group {group.name!r}: image spec {path} does not exist")
        digest = plan_image_digest([path], self.store)
        published = target.find_image(provider, digest)
        if published is not None:
            return GroupImage(published, group.image, digest)
        if not self.build:
            return GroupImage(digest, group.image, digest, pending=True)
        artifact = self.build_artifact(path, digest, target.formats[0])
        ref = target.publish(provider, artifact, self.progress)
        self._say(f"group {group.name}: published {digest[:19]} as {ref.id}")
        return GroupImage(ref.id, group.image, digest)

    def build_artifact(self, spec_path: Path, digest: str, fmt: str) -> Artifact:
        """The ``fmt`` build of ``spec_path`` from the artifact cache, building it once."""
        return build_cached_artifact(
            spec_path,
            digest,
            fmt,
            store=self.store,
            artifacts=self.artifacts,
            progress=self.progress,
        )


def build_cached_artifact(
    spec_path: Path,
    digest: str,
    fmt: str,
    *,
    store: ImageStore,
    artifacts: Path,
    progress: Progress | None = None,
) -> Artifact:
    """The ``fmt`` build of ``spec_path`` (whose planned digest is ``digest``) from the artifact
    cache ``artifacts/<digest hex>/<format>/``, building it there once (renamed into place)."""
    from provision.build import build_image

    name = spec_path.name.split(".")[0] or "image"
    final = artifacts / digest.split(":", 1)[1] / fmt.replace("+", "-")
    manifest = final / f"{name}.manifest.json"
    if manifest.is_file():
        return read_artifact(manifest, fmt)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        if progress is not None:
            progress(f"building {spec_path} as {fmt} ({digest[:19]})")
        result = build_image(
            [spec_path], store=store, formats=fmt, outdir=staging, name=name, progress=progress
        )
        if result.image_digest != digest:
            raise ProvisionError(
                f"{spec_path}: the build's digest {result.image_digest} is not the planned {digest}",
                hint="an input changed during the build; run again",
            )
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / f"{name}.manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_artifact(manifest, fmt)
