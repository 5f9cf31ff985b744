"""``provision push gcp``'s flags (no SDK imported here: the CLI reads this at every start)."""

from __future__ import annotations

import argparse

from provision.push import PushCommand, PushFlag, comma_list, key_value

PUSH_COMMAND = PushCommand(
    help="upload a gcp build to Cloud Storage and make a Compute Engine image of it",
    description="Push to Google Cloud (docs/gcp.md): the tarball to gs://BUCKET, then "
    "images.insert in PROJECT, reusing an image labelled with the digest.",
    flags=(
        PushFlag(("--project",), "project", "the GCP project"),
        PushFlag(("--bucket",), "bucket", "the Cloud Storage bucket the tarball is uploaded to"),
        PushFlag(("--family",), "family", "the image family"),
        PushFlag(
            ("--guest-os-features",),
            "guest_os_features",
            "default: UEFI_COMPATIBLE,VIRTIO_SCSI_MULTIQUEUE,GVNIC",
            {"type": comma_list, "metavar": "A,B"},
        ),
        PushFlag(
            ("--storage-location",),
            "storage_location",
            "where the image is stored (a region or multi-region)",
        ),
        PushFlag(
            ("--deprecate-previous",),
            "deprecate_previous",
            "mark the family's other images DEPRECATED, replaced by this one (never deletes)",
            {"action": "store_true"},
        ),
        PushFlag(
            ("--label",),
            "labels",
            "an extra image label (repeatable)",
            {"action": "append", "type": key_value, "metavar": "KEY=VALUE"},
            convert=dict,
        ),
        # another Compute Engine endpoint (a private one, a local stand-in), and no credentials
        # (local stand-ins only)
        PushFlag(("--endpoint",), "endpoint", argparse.SUPPRESS),
        PushFlag(("--anonymous",), "anonymous", argparse.SUPPRESS, {"action": "store_true"}),
    ),
)
