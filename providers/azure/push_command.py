"""The flags of ``provision push azure`` and the call they make: the azure target's part of the
push command (provision/commands/push.py adds it as a subcommand and prints what it returns)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provision.errors import UsageError
from provision.providers.azure.clients import arm_clients, blob_container
from provision.providers.azure.push import AzurePush, parse_replicas, push_azure
from provision.target import read_artifact

PUSH_HELP = "upload the fixed VHD as a page blob, then a managed image or gallery version"


def _replicas(text: str) -> dict[str, int]:
    try:
        return parse_replicas(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Upload SOURCE's fixed VHD to a storage account as a page blob (4 MiB pages in "
        "parallel, empty pages never sent, resumable), then register it as a managed image or a "
        "Compute Gallery image version tagged with the image digest. A digest already published is "
        "reused. Credentials: DefaultAzureCredential (az login, environment, managed identity), or "
        "PROVISION_AZURE_TOKEN; blobs also AZURE_STORAGE_CONNECTION_STRING.")
    parser.add_argument("--subscription", default=None,
                        help="subscription id (default: $AZURE_SUBSCRIPTION_ID)")
    parser.add_argument("--resource-group", required=True)
    parser.add_argument("--storage-account", required=True)
    parser.add_argument("--storage-resource-group", default=None,
                        help="the storage account's group when not --resource-group")
    parser.add_argument("--container", required=True)
    parser.add_argument("--location", required=True)
    parser.add_argument("--name", default=None, help="managed image name (default: NAME-DIGEST12)")
    parser.add_argument("--hyperv-generation", choices=("V1", "V2"), default=None,
                        help="default V2 (the VHD boots UEFI; V1 boots it by BIOS)")
    parser.add_argument("--architecture", choices=("x64", "Arm64"), default="x64")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--managed-image", action="store_true", help="make a managed image (the default)")
    kind.add_argument("--gallery", default=None, help="make a version in this Compute Gallery")
    parser.add_argument("--gallery-image", default=None, help="the gallery's image definition")
    parser.add_argument("--version", default=None, help="the image version, X.Y.Z")
    parser.add_argument("--replicas", type=_replicas, default={},
                        help="REGION=N,... for a gallery version (the push's location gets 1)")
    parser.add_argument("--security-type", choices=("Standard", "TrustedLaunch"), default="Standard")
    parser.add_argument("--workers", type=int, default=8, help="pages uploaded at once (default 8)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for each image operation (default 3600)")


def run_push(args: argparse.Namespace, manifest: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Push the build of ``manifest`` as ``args`` say; the JSON result."""
    if args.workers < 1 or args.workers > 64:
        raise UsageError(f"--workers must be 1 to 64, not {args.workers}")
    if args.gallery is None and (args.gallery_image or args.version or args.replicas):
        raise UsageError("--gallery-image, --version and --replicas need --gallery")
    subscription = args.subscription or os.environ.get("AZURE_SUBSCRIPTION_ID")
    if not subscription:
        raise UsageError("no subscription", hint="give --subscription or set AZURE_SUBSCRIPTION_ID")
    artifact = read_artifact(manifest, "vhd")
    push = AzurePush(
        resource_group=args.resource_group, storage_account=args.storage_account, container=args.container,
        location=args.location, name=args.name, hyper_v_generation=args.hyperv_generation,
        architecture=args.architecture, security_type=args.security_type, gallery=args.gallery,
        gallery_image=args.gallery_image, version=args.version, replicas=args.replicas,
        storage_resource_group=args.storage_resource_group, workers=args.workers, timeout=args.timeout,
    )
    result = push_azure(artifact, push, arm_clients(subscription), blob_container(args.storage_account, args.container),
                        progress=progress)
    return result.as_json()
