"""AMIs: registered from a snapshot as Bottlerocket registers them, found by the image digest
tag, copied into other regions (CopyImage, called in the destination region) and shared with
other accounts; each step looks first, so all of them are idempotent."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from provision.clock import Clock
from provision.errors import UsageError
from provision.providers.aws.clients import AwsClients, AwsError, aws_error, call
from provision.providers.aws.ebs import (
    TOKEN_NAMESPACE,
    delete_snapshot,
    identity_filters,
    identity_tags,
)
from provision.push import PushError, wait_for

if TYPE_CHECKING:
    from mypy_boto3_ec2.literals import ArchitectureValuesType, BootModeValuesType
    from mypy_boto3_ec2.type_defs import TagSpecificationTypeDef

ROOT_DEVICE = "/dev/xvda"
ARCHITECTURES = {"amd64": "x86_64", "arm64": "arm64"}


def architecture_of(platform: str) -> str:
    """EC2's architecture for an ``os/arch[/variant]`` platform."""
    arch = platform.split("/")[1] if "/" in platform else platform
    if arch not in ARCHITECTURES:
        raise UsageError(
            f"EC2 runs no {platform} images", hint="build for linux/amd64 or linux/arm64"
        )
    return ARCHITECTURES[arch]


def default_boot_mode(fmt: str, architecture: str) -> str:
    """raw-efi boots uefi, raw-bios legacy-bios; the hybrid aws disk uefi where EC2 can
    (``uefi-preferred`` on x86_64, ``uefi`` on arm64, which has no BIOS)."""
    if fmt == "raw-bios":
        return "legacy-bios"
    if fmt == "raw-efi" or architecture == "arm64":
        return "uefi"
    return "uefi-preferred"


def check_boot_mode(fmt: str, architecture: str, boot_mode: str, tpm: bool) -> None:
    if architecture == "arm64" and boot_mode != "uefi":
        raise UsageError(f"--boot-mode {boot_mode}: arm64 instances boot only uefi")
    if fmt == "raw-efi" and boot_mode == "legacy-bios":
        raise UsageError(
            "--boot-mode legacy-bios: a raw-efi disk has no BIOS boot loader",
            hint="build -f aws or raw-bios",
        )
    if fmt == "raw-bios" and boot_mode != "legacy-bios":
        raise UsageError(
            f"--boot-mode {boot_mode}: a raw-bios disk has no EFI boot loader",
            hint="build -f aws or raw-efi",
        )
    if tpm and boot_mode != "uefi":
        raise UsageError("--tpm needs --boot-mode uefi (EC2 offers NitroTPM only to uefi images)")


def digest_tags(digest: str, fmt: str, name: str, kind: str) -> list[TagSpecificationTypeDef]:
    return [{"ResourceType": kind, "Tags": identity_tags(digest, fmt, name)}]  # type: ignore[typeddict-item]


def find_image(
    clients: AwsClients, digest: str, fmt: str, region: str | None = None
) -> dict[str, Any] | None:
    """This account's image of ``digest`` as ``fmt`` in ``region`` (pending or available)."""
    images = call(
        "to look for images (DescribeImages)",
        lambda: clients.ec2(region).describe_images(
            Owners=["self"],
            Filters=[
                *identity_filters(digest, fmt),
                {"Name": "state", "Values": ["pending", "available"]},
            ],
        ),
    )["Images"]
    usable: list[dict[str, Any]] = [
        dict(i) for i in images if i.get("State") in ("pending", "available")
    ]
    if not usable:
        return None
    return max(usable, key=lambda i: str(i.get("CreationDate", "")))


def root_snapshot(image: dict[str, Any]) -> str:
    for mapping in image.get("BlockDeviceMappings", []):
        snapshot = mapping.get("Ebs", {}).get("SnapshotId")
        if snapshot:
            return str(snapshot)
    return ""


def register_image(
    clients: AwsClients,
    *,
    snapshot_id: str,
    name: str,
    digest: str,
    fmt: str,
    architecture: str,
    boot_mode: str,
    tpm: bool,
    volume_gib: int,
) -> str:
    """RegisterImage on ``snapshot_id``; when it fails the snapshot is deleted (a failed push
    leaves nothing behind) and the error names what happened to it. A retried RegisterImage
    whose first try did register (the name is taken by the image of this digest) returns it."""
    extra: dict[str, Any] = {"TpmSupport": "v2.0"} if tpm else {}
    arch: ArchitectureValuesType = architecture  # type: ignore[assignment]
    mode: BootModeValuesType = boot_mode  # type: ignore[assignment]
    what = "to register the image (RegisterImage)"
    try:
        image_id = call(
            what,
            lambda: clients.ec2().register_image(
                Name=name,
                Description=f"{name} ({digest})",
                Architecture=arch,
                RootDeviceName=ROOT_DEVICE,
                BlockDeviceMappings=[
                    {
                        "DeviceName": ROOT_DEVICE,
                        "Ebs": {
                            "SnapshotId": snapshot_id,
                            "VolumeSize": volume_gib,
                            "VolumeType": "gp3",
                            "DeleteOnTermination": True,
                        },
                    }
                ],
                VirtualizationType="hvm",
                EnaSupport=True,
                SriovNetSupport="simple",
                BootMode=mode,
                ImdsSupport="v2.0",
                TagSpecifications=digest_tags(digest, fmt, name, "image"),
                **extra,
            ),
            passes={"InvalidAMIName.Duplicate"},
        )["ImageId"]
    except ClientError as exc:
        mine = find_image(clients, digest, fmt)
        if mine is not None and root_snapshot(mine) == snapshot_id:
            return str(mine["ImageId"])
        failure: AwsError = aws_error(what, exc)
    except AwsError as exc:
        failure = exc
    else:
        return str(image_id)
    left = delete_snapshot(clients, snapshot_id)
    where = (
        f"; snapshot {snapshot_id} deleted"
        if left is None
        else f"; snapshot {snapshot_id} NOT deleted ({left})"
    )
    raise PushError(failure.message + where, hint=failure.hint)


def image_state(clients: AwsClients, image_id: str, region: str | None = None) -> str | None:
    """None once ``available``; the state while pending; a PushError when it failed."""
    try:
        images = call(
            f"to read the state of {image_id} (DescribeImages)",
            lambda: clients.ec2(region).describe_images(ImageIds=[image_id]),
            passes={"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"},
        )["Images"]
    except ClientError:
        return "not visible yet"
    state = str(images[0].get("State", "unknown")) if images else "not visible yet"
    if state == "available":
        return None
    if state in ("failed", "invalid", "error", "deregistered"):
        reason = images[0].get("StateReason", {}).get("Message", "")
        raise PushError(f"image {image_id} is {state}", hint=str(reason) or None)
    return state


def wait_available(
    clients: AwsClients, image_id: str, region: str, timeout: float, clock: Clock
) -> None:
    wait_for(
        lambda: image_state(clients, image_id, region),
        what=f"image {image_id} in {region}",
        timeout=timeout,
        clock=clock,
    )


def copy_image(
    clients: AwsClients,
    *,
    image_id: str,
    source_region: str,
    region: str,
    name: str,
    digest: str,
    fmt: str,
) -> str:
    """The copy of ``image_id`` in ``region``: found by its digest tag, or made by CopyImage
    (called in ``region``, with a ClientToken from the digest, tagged at birth)."""
    found = find_image(clients, digest, fmt, region)
    if found is not None:
        return str(found["ImageId"])
    token = str(uuid.uuid5(TOKEN_NAMESPACE, f"copy|{digest}|{fmt}|{region}"))
    copied = call(
        f"to copy {image_id} into {region} (CopyImage)",
        lambda: clients.ec2(region).copy_image(
            SourceImageId=image_id,
            SourceRegion=source_region,
            Name=name,
            Description=f"{name} ({digest})",
            ClientToken=token,
            TagSpecifications=digest_tags(digest, fmt, name, "image"),
        ),
    )["ImageId"]
    return str(copied)


def share_image(
    clients: AwsClients,
    *,
    image_id: str,
    snapshot_id: str,
    accounts: Sequence[str],
    region: str | None = None,
) -> None:
    """Launch permission on the image and create-volume permission on its snapshot for each
    account that does not have them yet."""
    ec2 = clients.ec2(region)
    what = f"to share {image_id} with {', '.join(accounts)}"
    granted = {
        p.get("UserId")
        for p in call(
            what,
            lambda: ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission"),
        ).get("LaunchPermissions", [])
    }
    missing = [a for a in accounts if a not in granted]
    if missing:
        call(
            what,
            lambda: ec2.modify_image_attribute(
                ImageId=image_id, LaunchPermission={"Add": [{"UserId": a} for a in missing]}
            ),
        )
    if snapshot_id:
        volume = {
            p.get("UserId")
            for p in call(
                what,
                lambda: ec2.describe_snapshot_attribute(
                    SnapshotId=snapshot_id, Attribute="createVolumePermission"
                ),
            ).get("CreateVolumePermissions", [])
        }
        absent = [a for a in accounts if a not in volume]
        if absent:
            call(
                what,
                lambda: ec2.modify_snapshot_attribute(
                    SnapshotId=snapshot_id,
                    Attribute="createVolumePermission",
                    OperationType="add",
                    UserIds=absent,
                ),
            )
