"""Pushing an image (or a whole index) from the store to a registry.

Children go before what references them (layers and config, then the manifest, then the
index); a blob the registry already has (HEAD) is not uploaded again. Blobs up to
``chunk_size`` go in one PUT, larger ones in PATCH chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO
from urllib.parse import urlencode, urljoin

from provision.errors import DigestMismatchError, ImageNotFoundError, RegistryError
from provision.oci.model import INDEX_MEDIA_TYPES, Descriptor
from provision.oci.progress import BlobProgress, ByteProgress, ProgressFn
from provision.oci.store import ImageStore
from provision.oci.transport import Body, RegistryTransport, registry_message
from provision.reference import ImageRef

DEFAULT_CHUNK = 16 << 20


class _UploadReader:
    """A sized, progress-reporting file body for requests (sent with Content-Length)."""

    def __init__(self, handle: IO[bytes], size: int, report: BlobProgress):
        self.handle, self.size, self.report, self.sent = handle, size, report, 0

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        data = self.handle.read(amount)
        if not data:
            self.handle.close()
        self.sent += len(data)
        self.report(self.sent, self.size)
        return data


def push_image(
    transport: RegistryTransport,
    store: ImageStore,
    source: ImageRef | str,
    target: ImageRef | str,
    *,
    progress: ProgressFn | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> str:
    """Push the image (or whole index) ``source`` names in the store to ``target``.
    Returns the pushed manifest's digest."""
    target = ImageRef.parse(target) if isinstance(target, str) else target
    desc = store.lookup(source if isinstance(source, str) else source.name)
    if desc is None:
        parsed = ImageRef.parse(source) if isinstance(source, str) else source
        if parsed.digest and store.has_blob(parsed.digest):
            desc = Descriptor("", parsed.digest, store.blob_path(parsed.digest).stat().st_size)
        else:
            raise ImageNotFoundError(f"image {source} is not in the cache")
    pusher = _Pusher(transport, store, target, transport.base_url(target.registry), chunk_size)
    plan = list(_push_plan(store, desc))
    blobs = list(dict.fromkeys(b for b in plan if b[1] == "blob"))
    tracker = ByteProgress(sum(d.size for d, _ in blobs), progress)
    for blob, kind in plan:
        if kind == "blob":
            pusher.upload_blob(blob, tracker)
        else:
            pusher.put_manifest(
                blob, target.reference if blob.digest == desc.digest else blob.digest
            )
    return desc.digest


def _push_plan(store: ImageStore, desc: Descriptor) -> Iterator[tuple[Descriptor, str]]:
    """Blobs and manifests in upload order (children before what references them)."""
    doc = store.read_json(desc.digest)
    media = str(doc.get("mediaType") or desc.media_type)
    if media in INDEX_MEDIA_TYPES or "manifests" in doc:
        for raw in doc.get("manifests") or ():
            child = Descriptor.from_json(raw)
            if not store.has_blob(child.digest):
                raise ImageNotFoundError(
                    f"cannot push the index {desc.digest}: its manifest for "
                    f"{child.platform or child.digest} is not in the cache",
                    hint="pull every platform first, or push one platform's manifest",
                )
            yield from _push_plan(store, child)
    else:
        for raw in [doc.get("config") or {}, *(doc.get("layers") or ())]:
            blob = Descriptor.from_json(raw)
            if not store.has_blob(blob.digest):
                raise ImageNotFoundError(f"cannot push: blob {blob.digest} is not in the cache")
            yield blob, "blob"
    yield (
        Descriptor(media, desc.digest, store.blob_path(desc.digest).stat().st_size),
        "manifest",
    )


class _Pusher:
    """The uploads of one push to one repository."""

    def __init__(
        self,
        transport: RegistryTransport,
        store: ImageStore,
        target: ImageRef,
        base: str,
        chunk_size: int,
    ) -> None:
        self.transport, self.store, self.target, self.base = transport, store, target, base
        self.chunk_size = chunk_size
        self.scope = f"repository:{target.repository}:pull,push"

    def upload_blob(self, desc: Descriptor, tracker: ByteProgress) -> None:
        repo = self.target.repository
        head = self.transport.request(
            self.base,
            self.target.registry,
            "HEAD",
            f"/v2/{repo}/blobs/{desc.digest}",
            scope=self.scope,
            retry=True,
        )
        head.close()
        if head.status_code == 200:
            tracker.skip(desc.size)
            return
        start = self.transport.request(
            self.base,
            self.target.registry,
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scope=self.scope,
            headers={"Content-Length": "0"},
        )
        start.close()
        if start.status_code != 202 or "Location" not in start.headers:
            raise RegistryError(
                f"cannot start upload to {self.target.locator}: {registry_message(start)}"
            )
        location = urljoin(self.base + "/", start.headers["Location"])
        report = tracker.blob()
        body: Body
        if desc.size <= self.chunk_size:

            def monolithic() -> _UploadReader:
                return _UploadReader(self.store.open_blob(desc.digest), desc.size, report)

            body, headers = monolithic, {"Content-Type": "application/octet-stream"}
        else:
            location = self._upload_chunks(desc, location, report)
            body, headers = b"", {"Content-Length": "0"}
        finish = self.transport.request(
            self.base,
            self.target.registry,
            "PUT",
            _with_digest(location, desc.digest),
            scope=self.scope,
            headers=headers,
            body=body,
        )
        finish.close()
        if finish.status_code != 201:
            raise RegistryError(
                f"upload of {desc.digest} to {self.target.locator} failed: "
                f"{registry_message(finish)}"
            )

    def _upload_chunks(self, desc: Descriptor, location: str, report: BlobProgress) -> str:
        offset = 0
        with self.store.open_blob(desc.digest) as handle:
            while True:
                chunk = handle.read(self.chunk_size)
                if not chunk:
                    return location
                end = offset + len(chunk) - 1
                response = self.transport.request(
                    self.base,
                    self.target.registry,
                    "PATCH",
                    location,
                    scope=self.scope,
                    body=chunk,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{end}",
                    },
                )
                response.close()
                if response.status_code != 202:
                    raise RegistryError(
                        f"chunk {offset}-{end} of {desc.digest} refused: "
                        f"{registry_message(response)}"
                    )
                location = urljoin(self.base + "/", response.headers.get("Location", location))
                offset = end + 1
                report(offset, desc.size)

    def put_manifest(self, desc: Descriptor, reference: str) -> None:
        data = self.store.read_blob(desc.digest)
        response = self.transport.request(
            self.base,
            self.target.registry,
            "PUT",
            f"/v2/{self.target.repository}/manifests/{reference}",
            scope=self.scope,
            headers={"Content-Type": desc.media_type},
            body=data,
        )
        response.close()
        if response.status_code not in (200, 201):
            raise RegistryError(
                f"PUT manifest {self.target.locator}:{reference}: {registry_message(response)}"
            )
        announced = response.headers.get("Docker-Content-Digest")
        if announced and announced != desc.digest:
            raise DigestMismatchError(
                f"registry stored manifest as {announced}, expected {desc.digest}"
            )


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})
