"""``provision push TARGET SOURCE``: the cloud-independent half of pushing an image.

What every cloud shares lives here once: turning SOURCE into an :class:`Artifact` (an image
spec is planned for its digest, then built in the target's format into the artifact cache; a
build manifest is read as it is), the options (:class:`PushOptions`), the result
(:class:`PushResult`, what ``--json`` prints), upload progress (:class:`TransferProgress`) and
bounded waits that say why they ended (:func:`wait_for`). A target that can push satisfies
:class:`Pusher`; its ``push`` gets the digest first and asks for the artifact only when the
image is not published yet, so a re-push of an image spec builds nothing. Its command line,
``provision push NAME SOURCE ...``, is its own :class:`PushCommand`: a table of
:class:`PushFlag` (argparse's words, each filling a :class:`PushOptions` field), declared in
``providers/NAME/push_command.py`` so the CLI reads every target's flags without importing a
cloud SDK.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from provision.clock import Clock, SystemClock
from provision.errors import ProvisionError, UsageError
from provision.target import Artifact, Progress, read_artifact

if TYPE_CHECKING:  # the OCI store only when an image spec is pushed
    from provision.oci.store import ImageStore

MIB = 1024 * 1024
BOOT_MODES = ("uefi", "legacy-bios", "uefi-preferred")


class PushError(ProvisionError):
    """A push failed; what it left behind (if anything) is named in the message."""


class WaitTimeoutError(PushError):
    """A bounded wait ended before what it waited for happened."""


@dataclass(frozen=True)
class PushOptions:
    """How to push: the same words for every cloud; a target refuses what it cannot do."""

    region: str | None = None
    name: str | None = None  # the image is named NAME-<digest12>; default: the artifact's name
    boot_mode: str | None = None  # default: from the format (raw-efi uefi, raw-bios legacy-bios)
    tpm: bool = False
    copy_to: tuple[str, ...] = ()
    share_with: tuple[str, ...] = ()
    method: str = "ebs"
    bucket: str | None = None
    concurrency: int = 16
    timeout: float = 3600.0  # seconds: the bound of each wait (snapshot completed, image available)
    request_timeout: float = (
        60.0  # seconds without an answer before a request is abandoned and retried
    )
    # where an image goes in clouds that name a resource group, a storage account and a gallery
    subscription: str | None = None
    resource_group: str | None = None
    storage_account: str | None = None
    storage_resource_group: str | None = None
    container: str | None = None
    managed_image: bool = False  # a managed image (the default without gallery)
    gallery: str | None = None  # a gallery image version instead of a managed image
    gallery_image: str | None = None
    version: str | None = None
    replicas: Mapping[str, int] = field(default_factory=dict)  # region -> replica count
    security_type: str | None = None  # Standard | TrustedLaunch (default: TrustedLaunch with --tpm)
    hyperv_generation: str | None = None  # V1 | V2 (default: from the boot mode)
    # GCP (docs/gcp.md): the project, the image family, guest OS features (None: the target's
    # default), where the image is stored, whether the family's older images are deprecated,
    # extra image labels, and another API endpoint (a private one, a local stand-in) reached
    # with or without credentials
    project: str | None = None
    family: str | None = None
    guest_os_features: tuple[str, ...] | None = None
    storage_location: str | None = None
    deprecate_previous: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    endpoint: str | None = None
    anonymous: bool = False


@dataclass(frozen=True)
class PushResult:
    image_id: str
    snapshot_id: str
    region: str
    reused: bool  # True: the image was there already; nothing was uploaded
    digest: str
    name: str
    copies: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(
        default_factory=dict
    )  # what else a target reports (blob_url...)

    def to_json(self) -> dict[str, Any]:
        body = {
            "image_id": self.image_id,
            "snapshot_id": self.snapshot_id,
            "region": self.region,
            "reused": self.reused,
            "copies": dict(self.copies),
            "digest": self.digest,
            "name": self.name,
        }
        if not self.snapshot_id and self.details:
            del body["snapshot_id"]  # a target without snapshots (its blob is in details)
        return {**body, **self.details}


LoadArtifact = Callable[[], Artifact]


@dataclass(frozen=True)
class PushFlag:
    """One option of ``provision push NAME``: its option strings, the :class:`PushOptions` field
    it fills (``dest``), its help, and the rest of ``add_argument``'s keywords (type, choices,
    action, metavar). Not given, the field keeps its PushOptions default; ``convert`` turns
    what argparse parsed into the field's value."""

    names: tuple[str, ...]
    dest: str
    help: str | None = None
    keywords: Mapping[str, Any] = field(default_factory=dict)
    convert: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class PushCommand:
    """``provision push NAME``'s words: a one-line ``help``, the ``description`` its --help
    starts with, its own flags (beside SOURCE, --name, --timeout, --request-timeout, --json and
    --quiet, which every push takes), and groups of flags (by dest) of which one at most may be
    given."""

    help: str
    description: str
    flags: tuple[PushFlag, ...]
    exclusive: tuple[tuple[str, ...], ...] = ()


def comma_list(text: str) -> tuple[str, ...]:
    """``a, b,c`` as ``("a", "b", "c")`` (an argparse type)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def region_counts(text: str) -> dict[str, int]:
    """``eastus=2,westeurope=1`` as {region: count} (an argparse type)."""
    counts: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        region, _, count = item.partition("=")
        if not region.strip() or not count.isdigit() or not 1 <= int(count) <= 100:
            raise argparse.ArgumentTypeError(f"{item!r} is not REGION=N (N from 1 to 100)")
        counts[region.strip()] = int(count)
    return counts


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as a pair (an argparse type)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


BOOT_MODE_FLAG = PushFlag(
    ("--boot-mode",), "boot_mode", "default: from the format", {"choices": BOOT_MODES}
)
TPM_FLAG = PushFlag(("--tpm",), "tpm", "offer a TPM 2.0 (uefi only)", {"action": "store_true"})
CONCURRENCY_FLAG = PushFlag(
    ("--concurrency",), "concurrency", "uploads in flight (default 16)", {"type": int}
)


@runtime_checkable
class Pusher(Protocol):
    """A target that can push images (``provision push NAME``)."""

    @property
    def formats(self) -> tuple[str, ...]: ...

    @property
    def push_command(self) -> PushCommand:
        """Its ``provision push NAME`` (the ``PUSH_COMMAND`` of its push_command module)."""
        ...

    def push(
        self,
        digest: str,
        fmt: str,
        artifact: LoadArtifact,
        options: PushOptions,
        progress: Progress | None = None,
    ) -> PushResult:
        """Publish the image ``digest`` in the format ``fmt`` (what is published is keyed by
        both); call ``artifact()`` only when it must be uploaded."""
        ...


def image_name(name: str, digest: str) -> str:
    """``NAME-<first 12 hex digits of the digest>``."""
    return f"{name}-{digest.split(':', 1)[-1][:12]}"


def read_platform(artifact: Artifact) -> str:
    """The ``os/arch`` the artifact was built for, from its manifest."""
    import json

    try:
        return str(json.loads(artifact.manifest.read_text())["platform"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{artifact.manifest}: no platform in the build manifest ({exc})") from exc


def find_manifest(source: Path) -> Path:
    if source.is_dir():
        found = sorted(source.glob("*.manifest.json"))
        if len(found) != 1:
            raise UsageError(
                f"{source}: expected one *.manifest.json, found {len(found)}",
                hint="name the build manifest itself",
            )
        return found[0]
    return source


def pick_format(manifest: Path, formats: Sequence[str]) -> str:
    """The first of ``formats`` the build produced."""
    import json

    try:
        produced = {str(o["format"]) for o in json.loads(manifest.read_text())["outputs"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{manifest}: not a build manifest ({exc})") from exc
    for fmt in formats:
        if fmt in produced:
            return fmt
    raise UsageError(
        f"{manifest}: the build has none of the formats {', '.join(formats)}",
        hint=f"build it with: provision build -f {formats[0]}",
    )


@dataclass
class PushSource:
    """SOURCE resolved: its digest now, its artifact when asked (building an image spec once)."""

    digest: str
    format: str
    load: LoadArtifact


def resolve_source(
    source: Path,
    formats: Sequence[str],
    *,
    store: ImageStore | None = None,
    artifacts: Path | None = None,
    progress: Progress | None = None,
) -> PushSource:
    """An image spec (``.yml``/``.yaml``: planned for its digest, built as ``formats[0]`` into
    the artifact cache only when loaded) or a build's manifest (or its directory)."""
    if not source.exists():
        raise UsageError(f"{source}: no such file")
    if not (source.is_file() or source.is_dir()):  # a device or a FIFO would be read forever
        raise UsageError(f"{source}: not a file or a directory")
    if source.suffix in (".yml", ".yaml"):
        from provision.image_digest import plan_image_digest
        from provision.oci.store import ImageStore
        from provision.reconcile.image import build_cached_artifact, default_artifact_cache

        the_store = store or ImageStore.default()
        path = source.resolve()
        digest = plan_image_digest([path], the_store)
        cache = artifacts or default_artifact_cache()
        return PushSource(
            digest,
            formats[0],
            lambda: build_cached_artifact(
                path, digest, formats[0], store=the_store, artifacts=cache, progress=progress
            ),
        )
    manifest = find_manifest(source)
    artifact = read_artifact(manifest, pick_format(manifest, formats))
    return PushSource(artifact.digest, artifact.format, lambda: artifact)


def push_source(
    target: object,
    target_name: str,
    source: Path,
    options: PushOptions,
    *,
    progress: Progress | None = None,
    store: ImageStore | None = None,
    artifacts: Path | None = None,
) -> PushResult:
    if not isinstance(target, Pusher):
        raise UsageError(f"the {target_name} target cannot push images")
    resolved = resolve_source(
        source, target.formats, store=store, artifacts=artifacts, progress=progress
    )
    return target.push(resolved.digest, resolved.format, resolved.load, options, progress)


class ProgressLine(str):
    """A progress report of a transfer (the CLI redraws these in place on a terminal);
    ``fraction`` is how much is done, from 0 to 1."""

    fraction: float = 0.0

    @classmethod
    def of(cls, text: str, fraction: float) -> ProgressLine:
        line = cls(text)
        line.fraction = max(0.0, min(1.0, fraction))
        return line


class TransferProgress:
    """Bytes of an upload: sent, skipped (all zero), already there (resumed); reported through
    ``say`` at most every ``interval`` seconds, and once at the end. Thread-safe."""

    def __init__(
        self,
        say: Progress | None,
        what: str,
        total: int,
        *,
        interval: float = 1.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.say = say
        self.what = what
        self.total = total
        self.sent = 0
        self.skipped = 0
        self.present = 0
        self.interval = interval
        self._now = now
        self._start = now()
        self._last = -interval
        self._lock = threading.Lock()

    def add(self, *, sent: int = 0, skipped: int = 0, present: int = 0) -> None:
        with self._lock:
            self.sent += sent
            self.skipped += skipped
            self.present += present
            now = self._now()
            if now - self._last < self.interval:
                return
            self._last = now
            line = self.line(now)
        if self.say is not None:
            self.say(line)

    def line(self, now: float | None = None) -> ProgressLine:
        elapsed = max((now if now is not None else self._now()) - self._start, 1e-6)
        done = self.sent + self.skipped + self.present
        percent = 100.0 * done / self.total if self.total else 100.0
        text = (
            f"{self.what}: {done / MIB:.0f}/{self.total / MIB:.0f} MiB ({percent:.0f}%), "
            f"sent {self.sent / MIB:.1f} MiB, zero {self.skipped / MIB:.1f} MiB"
        )
        if self.present:
            text += f", already there {self.present / MIB:.1f} MiB"
        return ProgressLine.of(text + f", {self.sent / MIB / elapsed:.1f} MiB/s", percent / 100.0)

    def finish(self) -> None:
        if self.say is not None:
            self.say(self.line())


Check = Callable[[], str | None]  # None: done; otherwise the current status (raise on failure)


def wait_for(
    check: Check,
    *,
    what: str,
    timeout: float,
    clock: Clock | None = None,
    interval: float = 1.0,
    max_interval: float = 15.0,
) -> None:
    """Poll ``check`` with growing intervals until it returns None; a WaitTimeoutError naming
    the last status when ``timeout`` seconds pass first."""
    the_clock = clock or SystemClock()
    deadline = the_clock.now() + timeout
    delay = interval
    while True:
        status = check()
        if status is None:
            return
        remaining = deadline - the_clock.now()
        if remaining <= 0:
            raise WaitTimeoutError(
                f"gave up waiting for {what} after {timeout:.0f} s: still {status}"
            )
        the_clock.sleep(min(delay, remaining))
        delay = min(delay * 1.5, max_interval)
