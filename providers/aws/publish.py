"""``provision push aws``, and what a cluster's ``image: web.yml`` publishes: the image digest
is looked up first (an AMI tagged with it is reused: nothing uploaded), else the disk becomes a
snapshot (:mod:`.ebs`) and an AMI (:mod:`.ami`); then copies and shares, each idempotent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provision.clock import Clock, SystemClock
from provision.errors import UsageError
from provision.providers.aws import ami, ebs, importer
from provision.providers.aws.clients import AwsClients
from provision.providers.aws.session import SessionSettings
from provision.push import (
    BOOT_MODES,
    LoadArtifact,
    PushOptions,
    PushResult,
    image_name,
    read_platform,
)
from provision.reconcile.provider import Provider
from provision.target import Artifact, Progress, PublishedImage

FORMATS = (
    "aws",
    "raw-efi",
    "raw-bios",
)  # what EC2 boots from an EBS snapshot (the first: an image spec's)
METHODS = ("ebs", "import")


def check_options(options: PushOptions) -> None:
    if options.method not in METHODS:
        raise UsageError(f"--method {options.method}: must be one of {', '.join(METHODS)}")
    if options.method == "import" and not options.bucket:
        raise UsageError(
            "--method import needs --bucket (where the disk is uploaded for ImportSnapshot)"
        )
    if options.boot_mode is not None and options.boot_mode not in BOOT_MODES:
        raise UsageError(f"--boot-mode {options.boot_mode}: must be one of {', '.join(BOOT_MODES)}")
    if not 1 <= options.concurrency <= 256:
        raise UsageError("--concurrency must be from 1 to 256")
    for account in options.share_with:
        if not (account.isdigit() and len(account) == 12):
            raise UsageError(f"--share-with {account}: an AWS account id is 12 digits")


def check_reuse(image: dict[str, Any], options: PushOptions) -> None:
    """A reused AMI must be what was asked for: an explicit boot mode or TPM it lacks is an error."""
    mode = image.get("BootMode")
    if options.boot_mode is not None and mode != options.boot_mode:
        raise UsageError(
            f"{image['ImageId']} holds this image with boot mode {mode or 'unset'}, not {options.boot_mode}",
            hint="push without --boot-mode to use it, or deregister it (and its snapshot) first",
        )
    if options.tpm and image.get("TpmSupport") != "v2.0":
        raise UsageError(
            f"{image['ImageId']} holds this image without a TPM",
            hint="push without --tpm to use it, or deregister it (and its snapshot) first",
        )


def push_to_aws(
    digest: str,
    fmt: str,
    load: LoadArtifact,
    options: PushOptions,
    progress: Progress | None = None,
    *,
    clients: AwsClients | None = None,
    clock: Clock | None = None,
) -> PushResult:
    """Push the image ``digest`` in the format ``fmt`` (``load()`` gives its artifact)."""
    check_options(options)
    the_clock = clock or SystemClock()
    aws = clients or AwsClients(
        options.region, pool=options.concurrency + 4, read_timeout=options.request_timeout
    )
    aws.check_credentials()
    found = ami.find_image(aws, digest, fmt)
    if found is not None:
        check_reuse(found, options)
        image_id, snapshot_id, name, reused = (
            str(found["ImageId"]),
            ami.root_snapshot(found),
            str(found.get("Name", "")),
            True,
        )
        if progress is not None:
            progress(f"{aws.region}: {image_id} has {digest[:19]} already")
    else:
        artifact = load()
        if artifact.format != fmt:
            raise UsageError(
                f"{artifact.manifest}: a {artifact.format} output, not the {fmt} one asked for"
            )
        architecture = ami.architecture_of(read_platform(artifact))
        boot_mode = options.boot_mode or ami.default_boot_mode(artifact.format, architecture)
        ami.check_boot_mode(artifact.format, architecture, boot_mode, options.tpm)
        name = image_name(options.name or artifact.name, digest) + (
            "" if fmt == FORMATS[0] else f"-{fmt}"
        )
        disk = artifact.files[0]
        upload = upload_disk(aws, disk, digest, fmt, name, options, progress, the_clock)
        snapshot_id, reused = upload.snapshot_id, False
        image_id = ami.register_image(
            aws,
            snapshot_id=snapshot_id,
            name=name,
            digest=digest,
            fmt=fmt,
            architecture=architecture,
            boot_mode=boot_mode,
            tpm=options.tpm,
            volume_gib=ebs.volume_size_gib(disk.stat().st_size),
        )
        if progress is not None:
            progress(f"{aws.region}: registered {image_id} ({name}) on {snapshot_id}")
    ami.wait_available(aws, image_id, aws.region, options.timeout, the_clock)
    if options.share_with:
        ami.share_image(
            aws, image_id=image_id, snapshot_id=snapshot_id, accounts=options.share_with
        )
    copies: dict[str, str] = {}
    for region in options.copy_to:
        if region == aws.region:
            continue
        copy = ami.copy_image(
            aws,
            image_id=image_id,
            source_region=aws.region,
            region=region,
            name=name,
            digest=digest,
            fmt=fmt,
        )
        copies[region] = copy
        if progress is not None:
            progress(f"{region}: {copy} is the copy of {image_id}")
        if options.share_with:
            ami.wait_available(aws, copy, region, options.timeout, the_clock)
            described = ami.find_image(aws, digest, fmt, region) or {}
            ami.share_image(
                aws,
                image_id=copy,
                snapshot_id=ami.root_snapshot(described),
                accounts=options.share_with,
                region=region,
            )
    return PushResult(image_id, snapshot_id, aws.region, reused, digest, name, copies)


def upload_disk(
    aws: AwsClients,
    disk: Path,
    digest: str,
    fmt: str,
    name: str,
    options: PushOptions,
    progress: Progress | None,
    clock: Clock,
) -> ebs.SnapshotUpload:
    """A completed snapshot of ``disk`` (``digest`` as ``fmt``), by ``options.method``."""
    if options.method == "import":
        completed = ebs.find_snapshot(aws, digest, fmt, "completed")
        if completed is not None:
            return ebs.SnapshotUpload(completed, 0, 0, 0, reused=True)
        return importer.import_snapshot(
            aws,
            disk,
            digest,
            fmt,
            name,
            bucket=str(options.bucket),
            concurrency=options.concurrency,
            timeout=options.timeout,
            progress=progress,
            clock=clock,
        )
    return ebs.upload_snapshot(
        aws,
        disk,
        digest,
        fmt,
        name,
        concurrency=options.concurrency,
        timeout=options.timeout,
        progress=progress,
        clock=clock,
    )


def provider_settings(provider: Provider) -> SessionSettings | None:
    """The settings (region, profile, endpoint) of an aws cluster provider, unwrapping the
    engine's wrappers; None for a provider that has none."""
    inner: Any = provider
    while not hasattr(inner, "settings") and hasattr(inner, "inner"):
        inner = inner.inner
    settings = getattr(inner, "settings", None)
    return settings if isinstance(settings, SessionSettings) else None


def provider_clients(provider: Provider) -> AwsClients:
    settings = provider_settings(provider)
    if settings is None:
        raise TypeError(f"the aws target was handed a {type(provider).__name__}")
    return AwsClients.of(settings, pool=PushOptions().concurrency + 4)


class AwsPublishing:
    """The publish side of the aws target: ``provision push aws`` (:meth:`push`) and a cluster
    group's image spec (:meth:`find_image`, :meth:`publish`, in the provider's region)."""

    def push(
        self,
        digest: str,
        fmt: str,
        artifact: LoadArtifact,
        options: PushOptions,
        progress: Progress | None = None,
    ) -> PushResult:
        return push_to_aws(digest, fmt, artifact, options, progress)

    def find_image(self, provider: Provider, digest: str) -> str | None:
        """The AMI of ``digest`` in the format a group's image spec is built as (``aws``)."""
        found = ami.find_image(provider_clients(provider), digest, FORMATS[0])
        return None if found is None else str(found["ImageId"])

    def publish(
        self, provider: Provider, artifact: Artifact, progress: Progress | None = None
    ) -> PublishedImage:
        clients = provider_clients(provider)
        result = push_to_aws(
            artifact.digest,
            artifact.format,
            lambda: artifact,
            PushOptions(region=clients.region),
            progress,
            clients=clients,
        )
        return PublishedImage(result.image_id, artifact.digest, result.reused)
