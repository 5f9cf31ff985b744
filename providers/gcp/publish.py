"""Publishing a ``gcp`` build as a Compute Engine image, idempotent by the image digest.

1. An image labelled with the digest (``provision-digest``, the first 63 hex digits; the full
   digest is in its description) is reused: nothing is uploaded. The object the tarball goes to
   is looked up at the same time (:func:`look_up`: two reads, side by side). Neither needs
   google-cloud-compute (images.list is :mod:`.image_list`'s REST call, the object's metadata
   the storage client's): a rerun does not import it.
2. The tarball goes to ``gs://BUCKET/provision/<digest hex>.tar.gz`` (:mod:`.upload`:
   resumable, skipped when the same CRC32C is there).
3. ``images.insert`` with ``rawDisk.source``, the architecture of the build's platform, the
   family, guest OS features, labels; ``requestId`` derived from the digest and name so a retried
   insert is the same request; the global operation is waited on, bounded.
4. ``deprecate_previous``: every other image of the family not yet deprecated is marked
   DEPRECATED with the new one as replacement. Nothing is ever deleted.

Steps 3 and 4 use google-cloud-compute, imported when they run.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import google.cloud.storage as storage
from google.auth.credentials import Credentials

from provision.errors import UsageError
from provision.providers.gcp.clients import GceClients, call, wait_operation
from provision.providers.gcp.image_list import ListedImage, list_images
from provision.providers.gcp.upload import CHUNK, ResumableUpload, StoredObject, stat_object
from provision.target import Artifact

Progress = Callable[[str], None]
DIGEST_LABEL = "provision-digest"
NAMESPACE = uuid.UUID("5b0e7a43-52c4-4c1e-9a3c-6f4cf1f2a9b1")  # requestIds of provision's GCE calls
DEFAULT_FEATURES = ("UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE", "GVNIC")
FEATURES = frozenset(
    {
        "UEFI_COMPATIBLE",
        "VIRTIO_SCSI_MULTIQUEUE",
        "GVNIC",
        "SEV_CAPABLE",
        "SEV_SNP_CAPABLE",
        "SEV_LIVE_MIGRATABLE",
        "SEV_LIVE_MIGRATABLE_V2",
        "TDX_CAPABLE",
        "IDPF",
        "SECURE_BOOT",
        "MULTI_IP_SUBNET",
        "WINDOWS",
        "BARE_METAL_LINUX_COMPATIBLE",
        "SUSPEND_RESUME_COMPATIBLE",
    }
)
ARCHITECTURES = {"amd64": "X86_64", "arm64": "ARM64"}
IMAGE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
STORAGE_HOST = "https://storage.googleapis.com"


@dataclass(frozen=True)
class GcpPush:
    """Where and how to publish."""

    project: str
    bucket: str
    name: str | None = None  # the image is NAME-<digest12>; default: the build's name
    family: str | None = None
    guest_os_features: tuple[str, ...] | None = None  # None: DEFAULT_FEATURES
    storage_location: str | None = None
    deprecate_previous: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    wait_timeout: float = 1800.0
    request_timeout: float = 60.0
    chunk: int = CHUNK
    sessions: Path | None = None  # where resumable sessions are kept (default: the user cache)


@dataclass(frozen=True)
class GcpImage:
    image: str
    self_link: str
    family: str | None
    reused: bool
    digest: str
    uploaded: int = 0  # bytes sent by this push

    def to_json(self) -> dict[str, object]:
        return {
            "image": self.image,
            "self_link": self.self_link,
            "family": self.family,
            "reused": self.reused,
        }


def digest_label(digest: str) -> str:
    return digest.split(":", 1)[-1][:63]


def image_name(base: str, digest: str) -> str:
    readable = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")
    if not readable or not readable[0].isalpha():
        readable = "provision-" + readable
    name = f"{readable[:50].rstrip('-')}-{digest.split(':', 1)[-1][:12]}"
    if not IMAGE_NAME.fullmatch(name):
        raise UsageError(
            f"{base!r} cannot name a GCE image", hint="use lowercase letters, digits and dashes"
        )
    return name


def check_features(features: Sequence[str]) -> tuple[str, ...]:
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise UsageError(
            f"unknown guest OS feature {unknown[0]!r}", hint="known: " + ", ".join(sorted(FEATURES))
        )
    return tuple(dict.fromkeys(features))


def architecture_of(artifact: Artifact) -> str:
    try:
        platform = str(json.loads(artifact.manifest.read_text()).get("platform", "linux/amd64"))
    except (OSError, ValueError):
        platform = "linux/amd64"
    arch = platform.split("/")[1] if "/" in platform else platform
    if arch not in ARCHITECTURES:
        raise UsageError(f"{artifact.manifest}: GCE runs amd64 and arm64 images, not {platform}")
    return ARCHITECTURES[arch]


def _ready(image: ListedImage, digest: str) -> bool:
    return image.status == "READY" and digest in image.description


def find_published(
    clients: GceClients, project: str, digest: str, timeout: float
) -> ListedImage | None:
    """The READY image labelled with ``digest`` (newest first), or None."""
    found = list_images(
        clients, project, f'labels.{DIGEST_LABEL} = "{digest_label(digest)}"', timeout
    )
    matching = sorted(
        (i for i in found if _ready(i, digest)), key=lambda i: i.creation_timestamp, reverse=True
    )
    return matching[0] if matching else None


def object_name(digest: str) -> str:
    """Where a tarball of ``digest`` is uploaded in the bucket."""
    return f"provision/{digest.split(':', 1)[-1]}.tar.gz"


@dataclass(frozen=True)
class Found:
    """What there is already for a digest: its image (None: not published) and the object its
    tarball is uploaded to (None: no such object)."""

    image: ListedImage | None
    stored: StoredObject | None


def look_up(
    clients: GceClients, storage_client: storage.Client, push: GcpPush, digest: str
) -> Found:
    """The image labelled with ``digest`` and the state of its object, asked side by side (both
    are reads: when the image is there, the object's state is not used)."""
    with ThreadPoolExecutor(1, thread_name_prefix="gcs-lookup") as pool:
        stored = pool.submit(
            stat_object, storage_client, push.bucket, object_name(digest), push.request_timeout
        )
        image = find_published(clients, push.project, digest, push.request_timeout)
        return Found(image, stored.result())


def _features(push: GcpPush) -> tuple[str, ...]:
    return (
        DEFAULT_FEATURES
        if push.guest_os_features is None
        else check_features(push.guest_os_features)
    )


def publish_gcp(
    artifact: Artifact,
    push: GcpPush,
    clients: GceClients,
    storage_client: storage.Client,
    progress: Progress | None = None,
    *,
    found: Found | None = None,
) -> GcpImage:
    """Publish ``artifact`` (a ``gcp`` build); see the module docstring. ``found``: what the
    caller has just looked up for this digest (:func:`look_up`; not asked again)."""
    say = progress or (lambda _m: None)
    tarballs = [f for f in artifact.files if f.name.endswith(".tar.gz")]
    if artifact.format != "gcp" or len(tarballs) != 1:
        raise UsageError(
            f"{artifact.manifest}: push gcp takes the gcp format (a .tar.gz), not {artifact.format}",
            hint="build it with: provision build -f gcp",
        )
    architecture = architecture_of(artifact)
    features = _features(push)
    if found is None:
        found = look_up(clients, storage_client, push, artifact.digest)
    existing = found.image
    if existing is not None:
        say(f"image {existing.name} is {artifact.digest[:19]} already")
        return GcpImage(
            existing.name, existing.self_link, existing.family or None, True, artifact.digest
        )
    from google.cloud import compute_v1  # only to make an image (see the module docstring)

    name = image_name(push.name or artifact.name, artifact.digest)
    name_in_bucket = object_name(artifact.digest)
    sessions = push.sessions or _default_sessions()
    uploaded = ResumableUpload(
        storage_client,
        push.bucket,
        name_in_bucket,
        tarballs[0],
        sessions,
        chunk=push.chunk,
        timeout=push.request_timeout,
        progress=progress,
    ).run(looked=True, stored=found.stored)
    image = compute_v1.Image(
        name=name,
        description=f"provision image {artifact.digest}",
        raw_disk=compute_v1.RawDisk(source=f"{STORAGE_HOST}/{push.bucket}/{name_in_bucket}"),
        architecture=architecture,
        guest_os_features=[compute_v1.GuestOsFeature(type_=f) for f in features],
        labels={**push.labels, DIGEST_LABEL: digest_label(artifact.digest)},
    )
    if push.family:
        image.family = push.family
    if push.storage_location:
        image.storage_locations = [push.storage_location]
    request_id = str(
        uuid.uuid5(NAMESPACE, f"images.insert/{push.project}/{name}/{artifact.digest}")
    )
    say(f"creating image {name} from gs://{push.bucket}/{name_in_bucket}")
    insert = compute_v1.InsertImageRequest(
        project=push.project, image_resource=image, request_id=request_id
    )
    operation = call(
        "images.insert",
        lambda: clients.images.insert(request=insert, retry=None, timeout=push.request_timeout),
    )
    done = wait_operation(
        clients,
        push.project,
        operation,
        zone=None,
        timeout=push.wait_timeout,
        request_timeout=push.request_timeout,
        what=f"images.insert {name}",
    )
    # the operation's targetLink is the image's selfLink: no images.get needed
    made = ListedImage(name, done.target_link, push.family or "")
    if push.deprecate_previous and push.family:
        deprecate_family(clients, push, made)
    return GcpImage(
        made.name, made.self_link, made.family or None, False, artifact.digest, uploaded.sent
    )


def deprecate_family(clients: GceClients, push: GcpPush, current: ListedImage) -> list[str]:
    """Mark every other image of ``push.family`` DEPRECATED, replaced by ``current``."""
    from google.cloud import compute_v1

    images = list_images(clients, push.project, f'family = "{push.family}"', push.request_timeout)
    marked: list[str] = []
    for image in images:
        state = image.deprecated
        if image.name == current.name or state in ("DEPRECATED", "OBSOLETE", "DELETED"):
            continue
        status = compute_v1.DeprecationStatus(state="DEPRECATED", replacement=current.self_link)
        request_id = str(
            uuid.uuid5(NAMESPACE, f"images.deprecate/{push.project}/{image.name}/{current.name}")
        )
        deprecate = compute_v1.DeprecateImageRequest(
            project=push.project,
            image=image.name,
            request_id=request_id,
            deprecation_status_resource=status,
        )
        operation = call(
            "images.deprecate",
            functools.partial(
                clients.images.deprecate,
                request=deprecate,
                retry=None,
                timeout=push.request_timeout,
            ),
        )
        wait_operation(
            clients,
            push.project,
            operation,
            zone=None,
            timeout=push.wait_timeout,
            request_timeout=push.request_timeout,
            what=f"images.deprecate {image.name}",
        )
        marked.append(image.name)
    return marked


def _default_sessions() -> Path:
    import os

    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "provision" / "gcs-uploads"


def storage_client(project: str, creds: Credentials) -> storage.Client:
    """A storage client; ``STORAGE_EMULATOR_HOST`` (the SDK's own setting) points it at a stand-in."""
    return storage.Client(project=project, credentials=creds)
