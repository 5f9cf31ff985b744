"""``provision push azure``'s flags (no SDK imported here: the CLI reads this at every start)."""

from __future__ import annotations

from provision.push import (
    BOOT_MODE_FLAG,
    CONCURRENCY_FLAG,
    TPM_FLAG,
    PushCommand,
    PushFlag,
    comma_list,
    region_counts,
)

PUSH_COMMAND = PushCommand(
    help="upload a build's VHD as a page blob and make a managed image or gallery version",
    description="Push to Azure (docs/azure.md): the fixed VHD to a page blob, then a managed "
    "image or a Compute Gallery version, reusing one tagged with the digest.",
    flags=(
        PushFlag(
            ("--location", "--region"),
            "region",
            "the Azure location (required)",
            {"metavar": "LOCATION"},
        ),
        BOOT_MODE_FLAG,
        TPM_FLAG,
        PushFlag(
            ("--copy-to",),
            "copy_to",
            "copy the image into these regions (a gallery replica each)",
            {"type": comma_list, "metavar": "REGION,..."},
        ),
        CONCURRENCY_FLAG,
        PushFlag(
            ("--subscription",), "subscription", "subscription id (default: $AZURE_SUBSCRIPTION_ID)"
        ),
        PushFlag(("--resource-group",), "resource_group", "where the image is made"),
        PushFlag(
            ("--storage-account",), "storage_account", "where the VHD is uploaded as a page blob"
        ),
        PushFlag(
            ("--storage-resource-group",),
            "storage_resource_group",
            "the storage account's group, when not --resource-group",
        ),
        PushFlag(("--container",), "container", "the blob container"),
        PushFlag(
            ("--managed-image",),
            "managed_image",
            "make a managed image (the default)",
            {"action": "store_true"},
        ),
        PushFlag(("--gallery",), "gallery", "make a version in this Compute Gallery instead"),
        PushFlag(
            ("--gallery-image",),
            "gallery_image",
            "the gallery's image definition (made when missing)",
        ),
        PushFlag(("--version",), "version", "the gallery image version, X.Y.Z"),
        PushFlag(
            ("--replicas",),
            "replicas",
            "replicas of the gallery version per region (the location gets 1)",
            {"type": region_counts, "metavar": "REGION=N,..."},
        ),
        PushFlag(
            ("--security-type",),
            "security_type",
            "default: TrustedLaunch with --tpm, else Standard",
            {"choices": ("Standard", "TrustedLaunch")},
        ),
        PushFlag(
            ("--hyperv-generation",),
            "hyperv_generation",
            "default: from --boot-mode (legacy-bios V1), else V2",
            {"choices": ("V1", "V2")},
        ),
    ),
    exclusive=(("managed_image", "gallery"),),
)
