"""Make sure an image is in the store: the one call the build makes before assembly."""

from __future__ import annotations

from typing import Literal

from provision.errors import ImageNotFoundError, UsageError
from provision.oci.model import Platform, ResolvedImage
from provision.oci.registry import ProgressFn, RegistryClient
from provision.oci.store import ImageStore
from provision.reference import ImageRef

PullPolicy = Literal["missing", "always", "never"]
PULL_POLICIES: tuple[PullPolicy, ...] = ("missing", "always", "never")


def ensure_image(
    store: ImageStore,
    ref: ImageRef | str,
    platform: Platform | None = None,
    *,
    pull: PullPolicy = "missing",
    client: RegistryClient | None = None,
    progress: ProgressFn | None = None,
) -> ResolvedImage:
    """The image ``ref`` names for ``platform``, pulling per the policy:
    ``missing`` pulls only what the cache lacks, ``always`` re-checks tags with the registry,
    ``never`` uses the cache only. A digest-pinned reference found in the cache is never
    pulled again (its content cannot change)."""
    if pull not in PULL_POLICIES:
        raise UsageError(f"unknown pull policy {pull!r}", hint="use missing, always or never")
    ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
    platform = platform or Platform.host()
    if pull != "always" or ref.digest:
        try:
            return store.resolve(ref, platform)
        except ImageNotFoundError:
            if pull == "never":
                raise
    client = client if client is not None else RegistryClient()
    return client.pull(store, ref, platform, progress=progress)
