"""OCI images: the local store (an OCI image layout), image writing, registry client."""

from __future__ import annotations

from provision.oci.imagebuild import LayerEntry, tar_layer_from_entries, write_image, write_index
from provision.oci.model import Descriptor, ImageEntry, Platform, ResolvedImage
from provision.oci.store import ImageStore

__all__ = [
    "Descriptor",
    "ImageEntry",
    "ImageStore",
    "LayerEntry",
    "Platform",
    "ResolvedImage",
    "tar_layer_from_entries",
    "write_image",
    "write_index",
]
