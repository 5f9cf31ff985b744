"""``provision push TARGET SOURCE``: publish an image (an image spec or a build's manifest) to a
cloud, idempotent by the image digest."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from provision.errors import UsageError
from provision.providers import get_target, target_names
from provision.push import BOOT_MODES, ProgressLine, PushOptions, push_source


def _regions(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _replicas(text: str) -> dict[str, int]:
    """``eastus=2,westeurope=1`` as {region: count}."""
    replicas: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        region, _, count = item.partition("=")
        if not region.strip() or not count.isdigit() or not 1 <= int(count) <= 100:
            raise argparse.ArgumentTypeError(f"{item!r} is not REGION=N (N from 1 to 100)")
        replicas[region.strip()] = int(count)
    return replicas


def register(subparsers: Any) -> None:
    push = subparsers.add_parser(
        "push",
        help="publish an image to a cloud (idempotent by the image digest)",
        description="SOURCE is an image spec (built in the target's format first, cached by digest) "
        "or a build's NAME.manifest.json (or its directory).",
    )
    push.add_argument(
        "target", metavar="TARGET", help="where to push: " + ", ".join(target_names())
    )
    push.add_argument("source", type=Path, metavar="SOURCE")
    push.add_argument(
        "--region",
        "--location",
        dest="region",
        help="default: the SDK's configured region (Azure: the location, required)",
    )
    push.add_argument(
        "--name", help="the image is named NAME-<digest12> (default: the build's name)"
    )
    push.add_argument("--boot-mode", choices=BOOT_MODES, help="default: from the format")
    push.add_argument("--tpm", action="store_true", help="offer a TPM 2.0 (uefi only)")
    push.add_argument(
        "--copy-to",
        type=_regions,
        default=(),
        metavar="REGION,...",
        help="copy the image into these regions",
    )
    push.add_argument(
        "--share-with",
        type=_regions,
        default=(),
        metavar="ACCOUNT,...",
        help="share the image with these accounts",
    )
    push.add_argument("--method", default="ebs", help="how to upload (default: ebs)")
    push.add_argument(
        "--bucket", help="the bucket: for --method import (aws), for the tarball (gcp)"
    )
    push.add_argument("--concurrency", type=int, default=16, help="uploads in flight (default 16)")
    push.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds each wait may take (default 3600)"
    )
    push.add_argument(
        "--request-timeout",
        type=float,
        default=60.0,
        help="seconds without an answer before a request is retried (default 60)",
    )
    gcp = push.add_argument_group("gcp (docs/gcp.md)")
    gcp.add_argument("--project", help="the GCP project")
    gcp.add_argument("--family", help="the image family")
    gcp.add_argument(
        "--guest-os-features",
        type=_regions,
        metavar="A,B",
        help="default: UEFI_COMPATIBLE,VIRTIO_SCSI_MULTIQUEUE,GVNIC",
    )
    gcp.add_argument(
        "--storage-location", help="where the image is stored (a region or multi-region)"
    )
    gcp.add_argument(
        "--deprecate-previous",
        action="store_true",
        help="mark the family's other images DEPRECATED, replaced by this one (never deletes)",
    )
    gcp.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="an extra image label"
    )
    gcp.add_argument(
        "--endpoint", help=argparse.SUPPRESS
    )  # another Compute Engine endpoint (a local stand-in)
    gcp.add_argument(
        "--anonymous", action="store_true", help=argparse.SUPPRESS
    )  # local stand-ins only
    push.add_argument("--json", action="store_true", help="print the result as JSON")
    cloud = push.add_argument_group("Azure (provision push azure)")
    cloud.add_argument("--subscription", help="subscription id (default: $AZURE_SUBSCRIPTION_ID)")
    cloud.add_argument("--resource-group")
    cloud.add_argument("--storage-account", help="where the VHD is uploaded as a page blob")
    cloud.add_argument(
        "--storage-resource-group", help="the storage account's group, when not --resource-group"
    )
    cloud.add_argument("--container", help="the blob container")
    kind = cloud.add_mutually_exclusive_group()
    kind.add_argument(
        "--managed-image", action="store_true", help="make a managed image (the default)"
    )
    kind.add_argument("--gallery", help="make a version in this Compute Gallery instead")
    cloud.add_argument("--gallery-image", help="the gallery's image definition (made when missing)")
    cloud.add_argument("--version", help="the gallery image version, X.Y.Z")
    cloud.add_argument(
        "--replicas",
        type=_replicas,
        default={},
        metavar="REGION=N,...",
        help="replicas of the gallery version per region (the location gets 1)",
    )
    cloud.add_argument(
        "--security-type",
        choices=("Standard", "TrustedLaunch"),
        help="default: TrustedLaunch with --tpm, else Standard",
    )
    cloud.add_argument(
        "--hyperv-generation",
        choices=("V1", "V2"),
        help="default: from --boot-mode (legacy-bios V1), else V2",
    )
    push.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    push.set_defaults(func=push_image)


class ProgressPrinter:
    """Messages one per line; on a terminal, a transfer's progress redrawn in place as a bar."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.open = False  # a bar is on the current line

    def say(self, line: str) -> None:
        if self.tty and isinstance(line, ProgressLine):
            width = 24
            filled = round(line.fraction * width)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}\x1b[K")
            self.stream.flush()
            self.open = True
            return
        self.end()
        print(line, file=self.stream, flush=True)

    def end(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def push_image(args: argparse.Namespace) -> int:
    if args.timeout <= 0 or args.request_timeout <= 0:
        raise UsageError("--timeout and --request-timeout must be positive")
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    options = PushOptions(
        region=args.region,
        name=args.name,
        boot_mode=args.boot_mode,
        tpm=args.tpm,
        copy_to=args.copy_to,
        share_with=args.share_with,
        method=args.method,
        bucket=args.bucket,
        concurrency=args.concurrency,
        timeout=args.timeout,
        request_timeout=args.request_timeout,
        subscription=args.subscription,
        resource_group=args.resource_group,
        storage_account=args.storage_account,
        storage_resource_group=args.storage_resource_group,
        container=args.container,
        gallery=args.gallery,
        gallery_image=args.gallery_image,
        version=args.version,
        replicas=args.replicas,
        security_type=args.security_type,
        hyperv_generation=args.hyperv_generation,
        project=args.project,
        family=args.family,
        guest_os_features=args.guest_os_features,
        storage_location=args.storage_location,
        deprecate_previous=args.deprecate_previous,
        labels=labels,
        endpoint=args.endpoint,
        anonymous=args.anonymous,
    )
    target = get_target(args.target)
    reporter = ProgressPrinter(sys.stderr)
    try:
        result = push_source(
            target, args.target, args.source, options, progress=None if args.quiet else reporter.say
        )
    finally:
        reporter.end()
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        state = "reused" if result.reused else "pushed"
        print(f"{result.image_id} {result.region} ({state} {result.name})")
        for region, image_id in sorted(result.copies.items()):
            print(f"{image_id} {region} (copy)")
    return 0
