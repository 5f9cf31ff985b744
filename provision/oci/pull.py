"""Pulling images from registries into the store, and the pull policy the build uses.

- Mirrors are tried in order before the registry itself.
- Every manifest and blob is checked against its digest before it is stored.
- Blobs download in parallel (``parallel`` at once, default 4) and stream to disk; an
  interrupted download is kept in the store and resumed with a ``Range`` request where the
  registry honours ranges (the whole blob is still verified at the end).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import requests
import urllib3

from provision.errors import DigestMismatchError, ImageNotFoundError, RegistryError, UsageError
from provision.oci.model import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    Platform,
    ResolvedImage,
    choose_manifest,
    parse_digest,
)
from provision.oci.progress import BlobProgress, ByteProgress, ProgressFn
from provision.oci.store import BlobDownload, ImageStore
from provision.oci.transport import RegistryTransport, describe_exception, registry_message
from provision.reference import ImageRef
from provision.retry import RetryLater

if TYPE_CHECKING:
    from provision.oci.registry import RegistryClient

log = logging.getLogger(__name__)

ACCEPT_MANIFESTS = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
MAX_MANIFEST_BYTES = 4 << 20
# Blob bodies are read in pieces this big: what an interrupted read held is lost, at most this.
BODY_PIECE = 256 << 10
PullPolicy = Literal["missing", "always", "never"]
PULL_POLICIES: tuple[PullPolicy, ...] = ("missing", "always", "never")


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: str

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.data))

    def document(self) -> dict[str, Any]:
        try:
            value = json.loads(self.data)
        except ValueError as exc:
            raise RegistryError(f"manifest {self.digest} is not valid JSON") from exc
        if not isinstance(value, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return value


class Interrupted(RetryLater):
    """A blob's body stopped before its end; the next try resumes where it stopped."""


class _Cancelled(Exception):
    """Another blob of the same pull failed: stop this one (its bytes stay for a resume)."""


def fetch_manifest(
    transport: RegistryTransport, base: str, ref: ImageRef, reference: str
) -> FetchedManifest:
    """GET one manifest or index, checked against its digest."""

    def attempt() -> tuple[bytes, Mapping[str, str]]:
        response = transport.send(
            base,
            ref.registry,
            "GET",
            f"/v2/{ref.repository}/manifests/{reference}",
            scope=f"repository:{ref.repository}:pull",
            headers={"Accept": ACCEPT_MANIFESTS},
            stream=True,
        )
        with response:
            if response.status_code == 404:
                raise ImageNotFoundError(f"{ref.locator}:{reference} not found at {base}")
            if response.status_code != 200:
                raise RegistryError(
                    f"GET manifest {ref.locator}:{reference} from {base}: "
                    f"{registry_message(response)}"
                )
            try:
                body: bytes = response.raw.read(MAX_MANIFEST_BYTES + 1, decode_content=True)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise Interrupted(
                    f"manifest {ref.locator}:{reference} from {base} stopped: "
                    + describe_exception(exc)
                ) from exc
        return body, response.headers

    data, headers = transport.call(f"GET manifest {ref.locator}:{reference}", attempt)
    if len(data) > MAX_MANIFEST_BYTES:
        raise RegistryError(f"manifest {ref.locator}:{reference} is larger than 4 MiB")
    expected = reference if reference.startswith("sha") and ":" in reference else None
    header = headers.get("Docker-Content-Digest")
    algorithm = parse_digest(expected)[0] if expected else "sha256"
    digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    if expected and digest != expected:
        raise DigestMismatchError(
            f"manifest of {ref.locator} does not match its digest: asked for {expected}, "
            f"got {digest}"
        )
    if not expected and header and header.startswith("sha256:") and header != digest:
        raise DigestMismatchError(
            f"manifest of {ref.locator}:{reference} does not match the digest the registry "
            f"announced ({header}); got {digest}"
        )
    doc = FetchedManifest(data, "", digest).document()
    media = str(doc.get("mediaType") or "")
    if not media:
        content_type = headers.get("Content-Type", "").split(";")[0].strip()
        media = (
            content_type
            if content_type in (INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES)
            else (
                "application/vnd.oci.image.index.v1+json"
                if "manifests" in doc
                else "application/vnd.oci.image.manifest.v1+json"
            )
        )
    if doc.get("schemaVersion") == 1 or "signed" in media or "v1+prettyjws" in media:
        raise RegistryError(
            f"{ref}: Docker schema 1 manifests are not supported",
            hint="re-push the image with a current tool",
        )
    return FetchedManifest(data, media, digest)


def fetch_blob(
    transport: RegistryTransport,
    base: str,
    ref: ImageRef,
    desc: Descriptor,
    store: ImageStore,
    report: BlobProgress | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Download one blob into the store, verified against ``desc``; resumes what an earlier
    try left (``Range``), and starts over once when resumed bytes fail verification."""
    with store.download_blob(desc.digest, desc.size) as download:
        if download is None:
            if report:
                report(desc.size, desc.size)
            return
        for _pass in range(2):
            _receive_while_progressing(
                transport,
                lambda: _receive(transport, base, ref, desc, download, report, cancel),
                download,
                f"GET blob {desc.digest}",
            )
            resumed = download.inherited > 0  # bytes an earlier process left are in it
            try:
                download.commit()
                return
            except DigestMismatchError:
                if not resumed:
                    raise
                log.info("resumed bytes of %s did not verify; downloading it again", desc.digest)
        raise AssertionError("unreachable")


def _receive_while_progressing(
    transport: RegistryTransport, attempt: Callable[[], None], download: BlobDownload, what: str
) -> None:
    """Run ``attempt`` under the retry policy; when the policy gives up on interruptions but
    bytes arrived since it started, start it afresh (a slow, flaky link still finishes; a
    link that delivers nothing is given up within the policy's bounds)."""
    while True:
        start = download.offset
        try:
            transport.call(what, attempt)
            return
        except RegistryError as exc:
            if not isinstance(exc.__cause__, Interrupted) or download.offset <= start:
                raise
            log.info("%s: %s; it made progress, so the retries start over", what, exc)


def _receive(
    transport: RegistryTransport,
    base: str,
    ref: ImageRef,
    desc: Descriptor,
    download: BlobDownload,
    report: BlobProgress | None,
    cancel: threading.Event | None,
) -> None:
    """One GET of the blob's missing bytes into ``download`` (raises RetryLater to retry)."""
    if cancel is not None and cancel.is_set():
        raise _Cancelled
    offset = download.offset
    headers = {"Accept-Encoding": "identity"}
    if 0 < offset < desc.size:
        headers["Range"] = f"bytes={offset}-"
    elif offset == desc.size and offset:
        return  # every byte is here; commit() verifies
    response = transport.send(
        base,
        ref.registry,
        "GET",
        f"/v2/{ref.repository}/blobs/{desc.digest}",
        scope=f"repository:{ref.repository}:pull",
        headers=headers,
        stream=True,
    )
    with response:
        status = response.status_code
        if status == 404:
            raise ImageNotFoundError(f"blob {desc.digest} of {ref.locator} not found at {base}")
        if status == 416 and "Range" in headers:
            download.restart()
            raise RetryLater(f"{base} refused the range of {desc.digest}", retry_after=0)
        if status == 206 and "Range" in headers:
            if not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                download.restart()
                raise RetryLater(f"{base} sent another range of {desc.digest}", retry_after=0)
        elif status == 200:
            if download.offset:
                download.restart()  # the registry ignored the range: start over
        else:
            raise RegistryError(
                f"GET blob {desc.digest} of {ref.locator}: {registry_message(response)}"
            )
        if report:
            report(download.offset, desc.size)
        try:
            for chunk in response.iter_content(BODY_PIECE):
                if cancel is not None and cancel.is_set():
                    raise _Cancelled
                download.write(chunk)
                if report:
                    report(download.offset, desc.size)
        except requests.exceptions.RequestException as exc:
            raise Interrupted(
                f"download of {desc.digest} from {base} stopped at byte {download.offset}: "
                + describe_exception(exc)
            ) from exc
    if download.offset < desc.size:
        raise Interrupted(
            f"download of {desc.digest} from {base} stopped at byte {download.offset} "
            f"of {desc.size}"
        )


def fetch_blobs(
    transport: RegistryTransport,
    base: str,
    ref: ImageRef,
    blobs: Sequence[Descriptor],
    store: ImageStore,
    progress: ProgressFn | None,
    parallel: int,
) -> None:
    """Download ``blobs`` (``parallel`` at once); the first failure stops the others."""
    tracker = ByteProgress(sum(b.size for b in blobs), progress)
    if progress and not blobs:
        progress(0, 0)
    if parallel <= 1 or len(blobs) <= 1:
        for blob in blobs:
            fetch_blob(transport, base, ref, blob, store, tracker.blob())
        return
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=min(parallel, len(blobs)), thread_name_prefix="pull")
    try:
        futures: list[Future[None]] = [
            pool.submit(fetch_blob, transport, base, ref, blob, store, tracker.blob(), cancel)
            for blob in blobs
        ]
        done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            cancel.set()
            wait(futures)
            error = failed.exception()
            assert error is not None
            raise error
    finally:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)


def pull_image(
    transport: RegistryTransport,
    store: ImageStore,
    ref: ImageRef | str,
    platform: Platform | None = None,
    *,
    progress: ProgressFn | None = None,
    parallel: int = 4,
) -> ResolvedImage:
    """Pull ``ref`` for ``platform`` (default: the host) into ``store`` and tag it, trying
    the registry's mirrors first."""
    ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
    platform = platform or Platform.host()
    endpoints = transport.pull_endpoints(ref.registry)
    for position, base in enumerate(endpoints):
        try:
            return _pull_from(transport, base, store, ref, platform, progress, parallel)
        except (RegistryError, ImageNotFoundError) as exc:
            if position + 1 == len(endpoints):
                raise
            log.warning("mirror %s failed for %s: %s; trying the next", base, ref, exc)
    raise AssertionError("unreachable")


def _pull_from(
    transport: RegistryTransport,
    base: str,
    store: ImageStore,
    ref: ImageRef,
    platform: Platform,
    progress: ProgressFn | None,
    parallel: int,
) -> ResolvedImage:
    with store.pinning():
        top = fetch_manifest(transport, base, ref, ref.reference)
        store.write_blob(top.data, top.digest)
        chosen = top
        for _depth in range(3):
            if chosen.media_type not in INDEX_MEDIA_TYPES:
                break
            desc = choose_manifest(chosen.document(), platform)
            if store.has_blob(desc.digest):
                data = store.read_blob(desc.digest)
                chosen = FetchedManifest(data, desc.media_type, desc.digest)
            else:
                chosen = fetch_manifest(transport, base, ref, desc.digest)
                store.write_blob(chosen.data, chosen.digest)
        doc = chosen.document()
        config = Descriptor.from_json(doc.get("config") or {})
        blobs = [config, *(Descriptor.from_json(d) for d in doc.get("layers") or ())]
        unique = {b.digest: b for b in blobs}
        missing = [b for b in unique.values() if not store.has_blob(b.digest)]
        fetch_blobs(transport, base, ref, missing, store, progress, parallel)
        store.tag(ref.name, top.descriptor)
        return store.resolve_descriptor(ref.name, top.descriptor, platform)


def ensure_image(
    store: ImageStore,
    ref: ImageRef | str,
    platform: Platform | None = None,
    *,
    pull: PullPolicy = "missing",
    client: RegistryClient | None = None,
    progress: ProgressFn | None = None,
) -> ResolvedImage:
    """The image ``ref`` names for ``platform``, pulling per the policy:
    ``missing`` pulls only what the cache lacks, ``always`` re-checks tags with the registry,
    ``never`` uses the cache only. A digest-pinned reference found in the cache is never
    pulled again (its content cannot change)."""
    if pull not in PULL_POLICIES:
        raise UsageError(f"unknown pull policy {pull!r}", hint="use missing, always or never")
    ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
    platform = platform or Platform.host()
    if pull != "always" or ref.digest:
        try:
            return store.resolve(ref, platform)
        except ImageNotFoundError:
            if pull == "never":
                raise
    if client is not None:
        return client.pull(store, ref, platform, progress=progress)
    transport = RegistryTransport()
    return pull_image(
        transport, store, ref, platform, progress=progress, parallel=transport.config.parallel
    )
