"""An image's digest before it is built: what ``provision plan`` shows and what every publish is
keyed by. The digest covers the spec, the manifest digest of every input image and the content
of every ``files`` source (:func:`provision.assemble.root.compute_image_digest`); nothing is
assembled, built or uploaded to learn it. Input images are resolved through the store as the
pull policy allows, exactly as the build resolves them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from provision.assemble.root import compute_image_digest, list_file_sources, list_image_uses
from provision.errors import ImageNotFoundError, ProvisionError
from provision.oci.model import Platform, ResolvedImage
from provision.oci.pull import PullPolicy, ensure_image
from provision.oci.registry import RegistryClient
from provision.oci.store import ImageStore
from provision.spec.image import ImageSpec
from provision.spec.load import load_spec


def is_component(ref: str) -> bool:
    """A component image this project builds (``provision/init:...``), never pulled."""
    return ref.split("/", 1)[0] == "provision" or "/provision/" in ref


class ComponentsMissingError(ProvisionError):
    """The image spec uses component images (provision/...) that are not built yet."""


def resolve_spec_images(
    spec: ImageSpec,
    store: ImageStore,
    platform: Platform,
    *,
    pull: PullPolicy = "missing",
    client: RegistryClient | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, ResolvedImage]:
    """Every image the spec uses, by reference, resolved (pulled per ``pull``). Components
    (``provision/...``) are never pulled: they are built here, and a missing one is a
    :class:`ComponentsMissingError` naming them all."""
    images: dict[str, ResolvedImage] = {}
    missing: list[str] = []
    for use in list_image_uses(spec):
        if use.ref in images or use.ref in missing:
            continue
        if say is not None:
            say(f"resolve {use.ref}")
        component = is_component(use.ref)
        try:
            images[use.ref] = ensure_image(
                store, use.ref, platform, pull="never" if component else pull, client=client
            )
        except ImageNotFoundError:
            if not component:
                raise
            missing.append(use.ref)
    if missing:
        raise ComponentsMissingError(
            f"the component images {', '.join(missing)} are not built yet",
            hint="build them first: provision pkg build --all",
        )
    return images


def plan_image_digest(
    spec_files: Sequence[Path],
    store: ImageStore,
    *,
    platform: Platform | None = None,
    pull: PullPolicy = "missing",
) -> str:
    """The image digest a build of ``spec_files`` will have."""
    spec = load_spec(spec_files)
    images = resolve_spec_images(spec, store, platform or Platform.host(), pull=pull)
    return compute_image_digest(spec, images, list_file_sources(spec, spec_files[0].parent))
