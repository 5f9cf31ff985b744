"""What an uploaded VHD becomes: a managed image, or a Compute Gallery image version.

Both carry the image digest in the ``provision-digest`` tag and are found by it: publishing a
digest that is already there (under any name or version) creates nothing. Managed images boot
Standard VMs of either generation; Trusted Launch needs a gallery image, so a gallery image
definition is made (when missing) with the OS type, Hyper-V generation, architecture and
security type asked for, and an existing one that does not match is refused rather than
changed. Every long-running operation is waited on through the SDK's poller with a bound.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.core.polling import LROPoller
from azure.mgmt.compute import models

from provision.errors import UsageError
from provision.providers.azure.clients import ArmClients
from provision.providers.azure.errors import AzurePublishError, call_retried, describe, status_of
from provision.retry import RetryLater, RetryPolicy

DIGEST_TAG = "provision-digest"
GENERATIONS = ("V1", "V2")
ARCHITECTURES = ("x64", "Arm64")
SECURITY_TYPES = ("Standard", "TrustedLaunch")


@dataclass(frozen=True)
class ImageRequest:
    """Where and what to register. ``gallery`` set: a gallery image version, else a managed image."""

    resource_group: str
    location: str
    name: str  # the managed image's name
    hyper_v_generation: str = "V2"
    architecture: str = "x64"
    security_type: str = "Standard"
    gallery: str | None = None
    gallery_image: str | None = None
    version: str | None = None
    replicas: Mapping[str, int] = field(default_factory=dict)  # region -> replica count
    storage_account_id: str = ""  # the blob's account (a gallery version names it)
    tags: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 3600.0  # each long-running operation

    def check(self) -> None:
        if self.hyper_v_generation not in GENERATIONS:
            raise UsageError(
                f"Hyper-V generation must be V1 or V2, not {self.hyper_v_generation!r}"
            )
        if self.architecture not in ARCHITECTURES:
            raise UsageError(f"architecture must be x64 or Arm64, not {self.architecture!r}")
        if self.security_type not in SECURITY_TYPES:
            raise UsageError(
                f"security type must be Standard or TrustedLaunch, not {self.security_type!r}"
            )
        if self.security_type == "TrustedLaunch" and self.hyper_v_generation != "V2":
            raise UsageError("Trusted Launch needs a generation V2 image (UEFI)")
        if self.gallery is None:
            if self.security_type != "Standard":
                raise UsageError(
                    "Trusted Launch VMs cannot boot managed images",
                    hint="publish to a Compute Gallery: --gallery G --gallery-image DEF --version X.Y.Z",
                )
            return
        if not self.gallery_image or not self.version:
            raise UsageError("a gallery image version needs --gallery-image and --version")
        parts = self.version.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise UsageError(f"a gallery image version is MAJOR.MINOR.PATCH, not {self.version!r}")


@dataclass(frozen=True)
class RegisteredImage:
    id: str
    reused: bool
    replicas: Mapping[str, int]


def _tag_of(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _wait(poller: LROPoller[Any], what: str, timeout: float) -> Any:
    """The poller's result within ``timeout`` seconds, or an error saying it is still running."""
    poller.wait(timeout)
    if not poller.done():
        raise AzurePublishError(
            f"{what}: still {poller.status()} after {timeout:g} s",
            hint="it goes on in Azure; rerun the push later to pick it up",
        )
    return poller.result()


class _Calls:
    """Runs SDK calls under the retry policy; failures become AzurePublishError."""

    def __init__(self, retry: RetryPolicy) -> None:
        self.retry = retry

    def __call__(self, what: str, action: Callable[[], Any]) -> Any:
        try:
            return call_retried(self.retry, what, action)
        except ResourceNotFoundError:
            raise
        except (AzureError, RetryLater) as exc:
            cause = exc.__cause__ if isinstance(exc, RetryLater) else exc
            hint = (
                "check the credential (az login, AZURE_CLIENT_ID..., PROVISION_AZURE_TOKEN) and its role "
                "on the resource group"
                if status_of(cause or exc) in (401, 403)
                else None
            )
            raise AzurePublishError(f"{what} failed: {describe(exc)}", hint=hint) from exc

    def get(self, what: str, action: Callable[[], Any]) -> Any:
        """``action``'s result, or None on a 404."""
        try:
            return self(what, action)
        except ResourceNotFoundError:
            return None


def _as_dict(model: Any) -> dict[str, Any]:
    return dict(model.as_dict()) if hasattr(model, "as_dict") else dict(model)


def _published(resource: Mapping[str, Any], digest: str) -> bool:
    return (resource.get("tags") or {}).get(DIGEST_TAG) == _tag_of(digest) and (
        resource.get("properties") or {}
    ).get("provisioningState") == "Succeeded"


def find_registered(
    arm: ArmClients, request: ImageRequest, digest: str, retry: RetryPolicy | None = None
) -> str | None:
    """The id of the image or gallery version already registered from ``digest``, or None."""
    calls = _Calls(retry or RetryPolicy())
    compute = arm.compute
    if request.gallery is None:
        images = calls(
            f"listing images in {request.resource_group}",
            lambda: [
                _as_dict(i) for i in compute.images.list_by_resource_group(request.resource_group)
            ],
        )
    else:
        gallery, definition = request.gallery, str(request.gallery_image)
        images = (
            calls.get(
                f"listing versions of {gallery}/{definition}",
                lambda: [
                    _as_dict(v)
                    for v in compute.gallery_image_versions.list_by_gallery_image(
                        request.resource_group, gallery, definition
                    )
                ],
            )
            or []
        )
    found = sorted(str(i["id"]) for i in images if _published(i, digest))
    return found[0] if found else None


def register_image(
    arm: ArmClients,
    request: ImageRequest,
    blob_url: str,
    digest: str,
    retry: RetryPolicy | None = None,
    progress: Callable[[str], None] | None = None,
) -> RegisteredImage:
    """Register the VHD at ``blob_url`` as asked; idempotent by ``digest``."""
    request.check()
    policy = retry or RetryPolicy()
    existing = find_registered(arm, request, digest, policy)
    if existing is not None:
        return RegisteredImage(existing, True, dict(request.replicas) or {request.location: 1})
    say = progress or (lambda _m: None)
    tags = {**request.tags, DIGEST_TAG: _tag_of(digest)}
    if request.gallery is None:
        return _managed_image(arm, request, blob_url, tags, _Calls(policy), say)
    return _gallery_version(arm, request, blob_url, tags, _Calls(policy), say)


def _managed_image(
    arm: ArmClients,
    request: ImageRequest,
    blob_url: str,
    tags: dict[str, str],
    calls: _Calls,
    say: Callable[[str], None],
) -> RegisteredImage:
    body: dict[str, Any] = {
        "location": request.location,
        "tags": tags,
        "properties": {
            "hyperVGeneration": request.hyper_v_generation,
            "storageProfile": {
                "osDisk": {
                    "osType": "Linux",
                    "osState": "Generalized",
                    "blobUri": blob_url,
                    "caching": "ReadWrite",
                }
            },
        },
    }
    say(f"creating managed image {request.name}")
    what = f"creating managed image {request.name}"
    image = calls(
        what,
        lambda: _wait(
            arm.compute.images.begin_create_or_update(
                request.resource_group, request.name, models.Image(body)
            ),
            what,
            request.timeout,
        ),
    )
    return RegisteredImage(str(_as_dict(image)["id"]), False, {request.location: 1})


def _definition_body(request: ImageRequest) -> dict[str, Any]:
    definition = str(request.gallery_image)
    properties: dict[str, Any] = {
        "osType": "Linux",
        "osState": "Generalized",
        "hyperVGeneration": request.hyper_v_generation,
        "architecture": request.architecture,
        "identifier": {"publisher": "provision", "offer": definition, "sku": definition},
    }
    if request.security_type == "TrustedLaunch":
        properties["features"] = [{"name": "SecurityType", "value": "TrustedLaunch"}]
    return {"location": request.location, "properties": properties}


def _definition_mismatch(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    have, want = found.get("properties") or {}, wanted["properties"]
    problems = [
        f"{key} is {have.get(key)!r}, not {want[key]!r}"
        for key in ("osType", "hyperVGeneration", "architecture")
        if have.get(key, want[key]) != want[key]
    ]
    security = {f["name"]: f["value"] for f in have.get("features") or []}.get(
        "SecurityType", "Standard"
    )
    wanted_security = {f["name"]: f["value"] for f in want.get("features") or []}.get(
        "SecurityType", "Standard"
    )
    if security != wanted_security:
        problems.append(f"security type is {security!r}, not {wanted_security!r}")
    return problems


def _gallery_version(
    arm: ArmClients,
    request: ImageRequest,
    blob_url: str,
    tags: dict[str, str],
    calls: _Calls,
    say: Callable[[str], None],
) -> RegisteredImage:
    compute, group = arm.compute, request.resource_group
    gallery, definition, version = (
        str(request.gallery),
        str(request.gallery_image),
        str(request.version),
    )
    if (
        calls.get(f"reading gallery {gallery}", lambda: compute.galleries.get(group, gallery))
        is None
    ):
        say(f"creating gallery {gallery}")
        what = f"creating gallery {gallery}"
        calls(
            what,
            lambda: _wait(
                compute.galleries.begin_create_or_update(
                    group, gallery, models.Gallery({"location": request.location, "properties": {}})
                ),
                what,
                request.timeout,
            ),
        )
    wanted = _definition_body(request)
    found = calls.get(
        f"reading image definition {definition}",
        lambda: compute.gallery_images.get(group, gallery, definition),
    )
    if found is None:
        say(f"creating image definition {gallery}/{definition}")
        what = f"creating image definition {definition}"
        calls(
            what,
            lambda: _wait(
                compute.gallery_images.begin_create_or_update(
                    group, gallery, definition, models.GalleryImage(wanted)
                ),
                what,
                request.timeout,
            ),
        )
    else:
        problems = _definition_mismatch(_as_dict(found), wanted)
        if problems:
            raise AzurePublishError(
                f"image definition {gallery}/{definition} does not fit this image: "
                + "; ".join(problems),
                hint="name another --gallery-image",
            )
    taken = calls.get(
        f"reading version {version}",
        lambda: compute.gallery_image_versions.get(group, gallery, definition, version),
    )
    if (
        taken is not None
        and (_as_dict(taken).get("tags") or {}).get(DIGEST_TAG) != tags[DIGEST_TAG]
    ):
        raise AzurePublishError(
            f"version {version} of {gallery}/{definition} holds another image",
            hint="gallery versions are immutable: give a new --version",
        )
    replicas = dict(request.replicas) or {request.location: 1}
    replicas.setdefault(request.location, 1)  # the source region is always a target
    body: dict[str, Any] = {
        "location": request.location,
        "tags": tags,
        "properties": {
            "publishingProfile": {
                "targetRegions": [
                    {"name": region, "regionalReplicaCount": count}
                    for region, count in sorted(replicas.items())
                ]
            },
            "storageProfile": {
                "osDiskImage": {
                    "source": {"storageAccountId": request.storage_account_id, "uri": blob_url}
                }
            },
        },
    }
    say(
        f"creating gallery image version {gallery}/{definition}/{version} in {len(replicas)} region(s)"
    )
    what = f"creating image version {version}"
    made = calls(
        what,
        lambda: _wait(
            compute.gallery_image_versions.begin_create_or_update(
                group, gallery, definition, version, models.GalleryImageVersion(body)
            ),
            what,
            request.timeout,
        ),
    )
    return RegisteredImage(str(_as_dict(made)["id"]), False, replicas)
