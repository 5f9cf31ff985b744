"""OCI images: the model (model.py), the local store, an OCI image layout (store.py), image
writing (imagebuild.py), archives, and the registry client (registry.py over config.py,
auth.py, transport.py, pull.py, push.py)."""

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
