"""``provision push aws``'s flags (no SDK imported here: the CLI reads this at every start)."""

from __future__ import annotations

from provision.push import (
    BOOT_MODE_FLAG,
    CONCURRENCY_FLAG,
    TPM_FLAG,
    PushCommand,
    PushFlag,
    comma_list,
)

PUSH_COMMAND = PushCommand(
    help="upload a build as an EBS snapshot and register an AMI",
    description="Push to AWS (docs/aws.md): the disk to an EBS snapshot (EBS direct, or "
    "ImportSnapshot from S3 with --method import), then an AMI, reusing one tagged with the digest.",
    flags=(
        PushFlag(("--region", "--location"), "region", "default: the SDK's configured region"),
        BOOT_MODE_FLAG,
        TPM_FLAG,
        PushFlag(
            ("--copy-to",),
            "copy_to",
            "copy the image into these regions",
            {"type": comma_list, "metavar": "REGION,..."},
        ),
        PushFlag(
            ("--share-with",),
            "share_with",
            "share the image with these accounts",
            {"type": comma_list, "metavar": "ACCOUNT,..."},
        ),
        PushFlag(("--method",), "method", "how to upload: ebs or import (default: ebs)"),
        PushFlag(("--bucket",), "bucket", "the S3 bucket --method import uploads to"),
        CONCURRENCY_FLAG,
    ),
)
