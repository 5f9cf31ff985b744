"""Turning a group's ``image`` into the id its provider launches.

``image`` is either an id the provider already knows (an AMI, a simulated image name, a digest)
or the path of an image spec to build. Building is the build pipeline's job: it registers a
builder with :func:`register_image_builder`, and :func:`resolve_group_image` calls it (for qemu
the result is the built artifact's digest). Until one is registered, a spec path is an error
with a hint rather than a silent guess.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from provision.errors import ProvisionError
from provision.reconcile.spec import GroupSpec, ProviderSpec

ImageBuilder = Callable[[Path, GroupSpec, ProviderSpec], str]
_builder: ImageBuilder | None = None
# A provider type that turns ``image`` into an id itself (qemu: build a spec or take a built
# artifact, return its digest) is asked first, with the image text as written.
ImageResolver = Callable[[str, GroupSpec, ProviderSpec, Path], str]
_resolvers: dict[str, ImageResolver] = {}


def register_image_resolver(provider_type: str, resolver: ImageResolver) -> None:
    _resolvers[provider_type] = resolver


def _resolver_for(provider_type: str) -> ImageResolver | None:
    if provider_type == "qemu" and "qemu" not in _resolvers:
        from provision.providers.qemu.provider import resolve_qemu_image

        _resolvers["qemu"] = resolve_qemu_image
    return _resolvers.get(provider_type)


def register_image_builder(builder: ImageBuilder | None) -> None:
    """Install the function that builds an image spec and returns the id to launch."""
    global _builder
    _builder = builder


def is_image_spec_path(image: str) -> bool:
    return image.endswith((".yml", ".yaml")) or "/" in image and Path(image).suffix in (".yml", ".yaml")


def resolve_group_image(group: GroupSpec, provider: ProviderSpec, base_dir: Path) -> str:
    """The image id the group's machines should run (building it first when it is a spec)."""
    resolver = _resolver_for(provider.type)
    if resolver is not None:
        return resolver(group.image, group, provider, base_dir)
    if not is_image_spec_path(group.image):
        return group.image
    path = (base_dir / group.image).resolve()
    if _builder is None:
        raise ProvisionError(
            f"group {group.name!r}: image {group.image!r} is an image spec, and no image builder is available",
            hint="build it with `provision build` and put the resulting image id in the cluster spec",
        )
    if not path.is_file():
        raise ProvisionError(f"group {group.name!r}: image spec {path} does not exist")
    return _builder(path, group, provider)
