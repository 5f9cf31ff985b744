"""``provision push azure`` as a library call: the fixed VHD up as a page blob, then a managed
image or a Compute Gallery image version made from it, idempotent by the image digest.

A digest already registered (tag ``provision-digest``) is reused before anything is read or
uploaded; otherwise the blob upload resumes or skips what is there (see :mod:`.blob`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from azure.storage.blob import ContainerClient

from provision.errors import UsageError
from provision.providers.azure.blob import FixedVhd, blob_name, read_fixed_vhd, upload_vhd
from provision.providers.azure.clients import ArmClients
from provision.providers.azure.errors import AzurePublishError
from provision.providers.azure.images import ImageRequest, find_registered, register_image
from provision.push import PushOptions
from provision.retry import RetryPolicy
from provision.target import Artifact

Progress = Callable[[str], None]


@dataclass(frozen=True)
class AzurePush:
    """Everything ``provision push azure`` was asked, minus the clients."""

    resource_group: str
    storage_account: str
    container: str
    location: str
    name: str | None = None  # the managed image's name; default: the build's name and digest
    hyper_v_generation: str | None = None  # default: V2 (the VHD boots EFI and BIOS alike)
    architecture: str = "x64"
    security_type: str = "Standard"
    gallery: str | None = None
    gallery_image: str | None = None
    version: str | None = None
    replicas: Mapping[str, int] = field(default_factory=dict)
    storage_resource_group: str | None = (
        None  # the storage account's group, when not resource_group
    )
    workers: int = 8
    timeout: float = 3600.0


@dataclass(frozen=True)
class AzurePushResult:
    image_id: str
    blob_url: str
    reused: bool
    replicas: Mapping[str, int]
    bytes_sent: int = 0
    pages_sent: int = 0
    pages_resumed: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "image_id": self.image_id,
            "blob_url": self.blob_url,
            "reused": self.reused,
            "replicas": dict(self.replicas),
        }


def parse_replicas(text: str) -> dict[str, int]:
    """``eastus=2,westeurope=1`` as {region: count}."""
    replicas: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        region, _, count = item.partition("=")
        if not region or not count.isdigit() or not 1 <= int(count) <= 100:
            raise UsageError(f"replicas: {item!r} is not REGION=N (N from 1 to 100)")
        replicas[region.strip()] = int(count)
    return replicas


def vhd_of(artifact: Artifact) -> FixedVhd:
    if artifact.format != "vhd" or not artifact.files:
        raise UsageError(
            f"{artifact.manifest}: Azure takes the fixed VHD (format vhd), not {artifact.format}",
            hint="build it with: provision build -f vhd",
        )
    return read_fixed_vhd(artifact.files[0])


def image_request(push: AzurePush, artifact: Artifact, subscription: str) -> ImageRequest:
    hexdigest = artifact.digest.removeprefix("sha256:")
    account_group = push.storage_resource_group or push.resource_group
    return ImageRequest(
        resource_group=push.resource_group,
        location=push.location,
        name=push.name or f"{artifact.name}-{hexdigest[:12]}",
        hyper_v_generation=push.hyper_v_generation or "V2",
        architecture=push.architecture,
        security_type=push.security_type,
        gallery=push.gallery,
        gallery_image=push.gallery_image,
        version=push.version,
        replicas=push.replicas,
        storage_account_id=(
            f"/subscriptions/{subscription}/resourceGroups/{account_group}"
            f"/providers/Microsoft.Storage/storageAccounts/{push.storage_account}"
        ),
        tags={"provision-image": artifact.name[:256]},
        timeout=push.timeout,
    )


def push_azure(
    artifact: Artifact,
    push: AzurePush,
    arm: ArmClients,
    container: ContainerClient,
    *,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> AzurePushResult:
    """Publish ``artifact`` (its fixed VHD) to Azure; see the module docstring."""
    vhd_of(artifact)  # a file Azure would refuse stops the push before any call
    return push_digest(
        artifact.digest, lambda: artifact, push, arm, container, retry=retry, progress=progress
    )


def push_digest(
    digest: str,
    load: Callable[[], Artifact],
    push: AzurePush,
    arm: ArmClients,
    container: ContainerClient,
    *,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> AzurePushResult:
    """Publish the image ``digest``; ``load()`` (which may build it) is called only when it is
    not registered yet."""
    unbuilt = Artifact(push.name or "image", digest, "vhd", (), Path("-"))
    probe = image_request(push, unbuilt, arm.subscription)
    probe.check()
    policy = retry or RetryPolicy()
    found = find_registered(arm, probe, digest, policy)
    blob_url = container.get_blob_client(blob_name(digest)).url
    if found is not None:
        if progress:
            progress(f"{digest[:19]} is published already: {found}")
        return AzurePushResult(found, blob_url, True, dict(push.replicas) or {push.location: 1})
    artifact = load()
    vhd = vhd_of(artifact)
    request = image_request(push, artifact, arm.subscription)
    if platform_of(artifact).endswith("/arm64"):
        request = replace(request, architecture="Arm64")
    uploaded = upload_vhd(
        container, vhd, digest, workers=push.workers, retry=policy, progress=progress
    )
    if progress:
        sent = f"{uploaded.bytes_sent / 2**20:.0f} MiB in {uploaded.pages_sent} pages"
        skipped = f"{uploaded.pages_resumed} already there" if uploaded.pages_resumed else ""
        progress(
            f"uploaded {blob_name(digest)}: "
            + ("complete already" if uploaded.reused else ", ".join(filter(None, [sent, skipped])))
        )
    try:
        image = register_image(arm, request, uploaded.url, digest, policy, progress)
    except AzurePublishError as exc:
        raise AzurePublishError(
            exc.message, hint=exc.hint or "the blob is uploaded; a rerun only registers it"
        ) from exc
    return AzurePushResult(
        image.id,
        uploaded.url,
        image.reused,
        image.replicas,
        uploaded.bytes_sent,
        uploaded.pages_sent,
        uploaded.pages_resumed,
    )


def platform_of(artifact: Artifact) -> str:
    """The build's ``os/arch`` from its manifest, '' when it names none."""
    try:
        return str(json.loads(artifact.manifest.read_text())["platform"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def push_settings(options: PushOptions) -> AzurePush:
    """``provision push azure``'s options as an :class:`AzurePush`; what Azure cannot do is refused."""
    missing = [
        flag
        for flag, value in (
            ("--location", options.region),
            ("--resource-group", options.resource_group),
            ("--storage-account", options.storage_account),
            ("--container", options.container),
        )
        if not value
    ]
    if missing:
        raise UsageError("provision push azure needs " + ", ".join(missing))
    if options.share_with or options.bucket or options.method != "ebs":
        raise UsageError(
            "--share-with, --bucket and --method are AWS's; Azure shares through the gallery's RBAC"
        )
    if options.gallery is None and (
        options.gallery_image or options.version or options.replicas or options.copy_to
    ):
        raise UsageError("--gallery-image, --version, --replicas and --copy-to need --gallery")
    if not 1 <= options.concurrency <= 64:
        raise UsageError(f"--concurrency must be 1 to 64 for Azure, not {options.concurrency}")
    generation = options.hyperv_generation or ("V1" if options.boot_mode == "legacy-bios" else "V2")
    security = options.security_type or ("TrustedLaunch" if options.tpm else "Standard")
    replicas = {region: 1 for region in options.copy_to}
    replicas.update(options.replicas)
    return AzurePush(
        resource_group=str(options.resource_group),
        storage_account=str(options.storage_account),
        container=str(options.container),
        location=str(options.region),
        name=options.name,
        hyper_v_generation=generation,
        security_type=security,
        gallery=options.gallery,
        gallery_image=options.gallery_image,
        version=options.version,
        replicas=replicas,
        storage_resource_group=options.storage_resource_group,
        workers=options.concurrency,
        timeout=options.timeout,
    )
