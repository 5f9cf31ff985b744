"""The local image cache: an OCI image layout on disk.

Layout (as the OCI image-layout spec, LinuxKit, skopeo ``oci:`` and umoci use it)::

    ROOT/oci-layout            {"imageLayoutVersion": "1.0.0"}
    ROOT/index.json            manifests, each named by org.opencontainers.image.ref.name
    ROOT/blobs/sha256/<hex>    content-addressed blobs
    ROOT/.ingest/              blobs being written (temp names, renamed into blobs/), and
                               interrupted downloads kept for resuming (ALG-HEX.partial)
    ROOT/.index.lock           flock: serialises read-modify-write of index.json
    ROOT/.gc.lock              flock: writers hold it shared, gc holds it exclusive

Every write is temp file + fsync + rename, so an interrupted pull leaves no corrupt blob and
two builds may share one store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from provision.compress import codec_for_media_type, sniff_codec
from provision.errors import DigestMismatchError, ImageNotFoundError, ProvisionError
from provision.fsutil import HashingWriter, write_bytes_atomic
from provision.oci.model import (
    CHUNK,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    OCI_LAYOUT_VERSION,
    REF_NAME_ANNOTATION,
    Descriptor,
    ImageEntry,
    Platform,
    ResolvedImage,
    canonical_json,
    choose_manifest,
    parse_digest,
)
from provision.reference import ImageRef

ProgressCallback = Callable[[int, int | None], None]


class Readable(Protocol):
    """Anything with ``read(size) -> bytes``: files, sockets, response bodies."""

    def read(self, size: int = -1, /) -> bytes: ...


class ImageStore:
    """An OCI image layout used as provision's image cache."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- locations -------------------------------------------------------------------------
    @classmethod
    def default(cls) -> ImageStore:
        """``$PROVISION_CACHE``, else ``$XDG_CACHE_HOME/provision/oci``, else
        ``~/.cache/provision/oci``."""
        env = os.environ.get("PROVISION_CACHE")
        if env:
            return cls(Path(env).expanduser())
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
        return cls(base / "provision" / "oci")

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def blob_path(self, digest: str) -> Path:
        algorithm, hexpart = parse_digest(digest)
        return self.root / "blobs" / algorithm / hexpart

    def ensure_layout(self) -> None:
        """Create the layout if it is not there yet (idempotent, safe concurrently)."""
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / ".ingest").mkdir(exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            self._write_atomic(layout, canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        if not self.index_path.exists():
            with self._index_lock():
                if not self.index_path.exists():
                    self._write_index(
                        {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []}
                    )

    # -- locks -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, name: str, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _index_lock(self) -> contextlib.AbstractContextManager[None]:
        return self._flock(".index.lock", fcntl.LOCK_EX)

    def pinning(self) -> contextlib.AbstractContextManager[None]:
        """Hold while writing blobs that are not yet tagged: gc waits until released."""
        return self._flock(".gc.lock", fcntl.LOCK_SH)

    # -- blobs -------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        path = self.blob_path(digest)
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise ImageNotFoundError(f"blob {digest} is not in the store at {self.root}") from None

    def read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as handle:
            return handle.read()

    def read_json(self, digest: str) -> dict[str, Any]:
        data = self.read_blob(digest)
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise ProvisionError(f"blob {digest} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ProvisionError(f"blob {digest} is not a JSON object")
        return value

    def write_blob(
        self,
        data: bytes | Readable,
        expected_digest: str | None = None,
        *,
        expected_size: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> tuple[str, int]:
        """Store ``data`` (bytes or a readable stream, read in chunks) and return
        ``(digest, size)``. With ``expected_digest`` the content must hash to it, else
        DigestMismatchError and nothing is stored. Written to a temp name and renamed."""
        algorithm = parse_digest(expected_digest)[0] if expected_digest else "sha256"
        if expected_digest and self.has_blob(expected_digest):
            size = self.blob_path(expected_digest).stat().st_size
            if progress:
                progress(size, size)
            return expected_digest, size
        self.ensure_layout()
        stream: Readable = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        with self.pinning():
            return self._ingest(stream, algorithm, expected_digest, expected_size, progress)

    def _ingest(
        self,
        stream: Readable,
        algorithm: str,
        expected_digest: str | None,
        expected_size: int | None,
        progress: ProgressCallback | None,
    ) -> tuple[str, int]:
        fd, tmp_name = tempfile.mkstemp(prefix="blob-", dir=self.root / ".ingest")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                writer = HashingWriter(out, algorithm)
                while True:
                    chunk = stream.read(CHUNK)
                    if not chunk:
                        break
                    writer.write(chunk)
                    if expected_size is not None and writer.size > expected_size:
                        raise DigestMismatchError(
                            f"content for {expected_digest or 'blob'} is larger than the "
                            f"expected {expected_size} bytes"
                        )
                    if progress:
                        progress(writer.size, expected_size)
                out.flush()
                os.fsync(out.fileno())
            digest = writer.digest
            if expected_digest and digest != expected_digest:
                raise DigestMismatchError(
                    f"content does not match its digest: expected {expected_digest}, got {digest}",
                    hint="the registry or the network corrupted the data; nothing was stored",
                )
            if expected_size is not None and writer.size != expected_size:
                raise DigestMismatchError(
                    f"content for {digest} has {writer.size} bytes, expected {expected_size}"
                )
            final = self.blob_path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
            return digest, writer.size
        finally:
            tmp.unlink(missing_ok=True)

    def partial_path(self, digest: str) -> Path:
        """Where an interrupted download of ``digest`` waits to be resumed."""
        algorithm, hexpart = parse_digest(digest)
        return self.root / ".ingest" / f"{algorithm}-{hexpart}.partial"

    @contextlib.contextmanager
    def download_blob(self, digest: str, size: int) -> Iterator[BlobDownload | None]:
        """A resumable download of the blob ``digest`` of ``size`` bytes: None when the blob is
        stored already, else a :class:`BlobDownload` that starts with whatever an earlier,
        interrupted download left. Other processes downloading the same blob wait (flock).
        What the download holds when the block ends without :meth:`BlobDownload.commit`
        stays for the next try (gc removes it)."""
        if self.has_blob(digest):
            yield None
            return
        self.ensure_layout()
        path = self.partial_path(digest)
        with self.pinning():
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    if self.has_blob(digest):
                        yield None
                        return
                    try:
                        current = os.stat(path).st_ino
                    except FileNotFoundError:
                        current = -1
                    if current != os.fstat(fd).st_ino:
                        continue  # the previous holder committed or discarded it: reopen
                    yield BlobDownload(self, digest, size, path, fd)
                    return
                finally:
                    _drop_if_empty(path, fd)
                    os.close(fd)

    def write_json_blob(self, value: Any) -> tuple[str, int]:
        return self.write_blob(canonical_json(value))

    def open_layer(self, desc: Descriptor) -> BinaryIO:
        """The layer's uncompressed tar stream (streaming; the codec its media type names, or
        the one its magic bytes show when the type is unknown)."""
        raw = self.open_blob(desc.digest)
        codec = codec_for_media_type(desc.media_type) or sniff_codec(raw)
        return codec.open_reader(raw)

    # -- index.json ---------------------------------------------------------------------------
    def read_index(self) -> dict[str, Any]:
        try:
            data = self.index_path.read_bytes()
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []}
        try:
            index = json.loads(data)
        except ValueError as exc:
            raise ProvisionError(
                f"{self.index_path} is not valid JSON: {exc}",
                hint="remove the cache directory to start over",
            ) from exc
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise ProvisionError(f"{self.index_path} is not an OCI image index")
        index.setdefault("manifests", [])
        return index

    def _write_index(self, index: Mapping[str, Any]) -> None:
        self._write_atomic(self.index_path, json.dumps(index, indent=2, sort_keys=True).encode())

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)

    @staticmethod
    def _normalize_name(name: str | ImageRef) -> str:
        if isinstance(name, ImageRef):
            return name.name
        try:
            return ImageRef.parse(name).name
        except ProvisionError:
            return name  # a plain layout tag such as "latest" (skopeo oci:DIR:TAG)

    def tag(self, name: str | ImageRef, desc: Descriptor) -> None:
        """Point ``name`` at ``desc`` (replacing what it named). The blob must be present."""
        name = self._normalize_name(name)
        if not self.has_blob(desc.digest):
            raise ImageNotFoundError(f"cannot tag {name}: blob {desc.digest} is not in the store")
        self.ensure_layout()
        entry = desc.with_annotations({**desc.annotations, REF_NAME_ANNOTATION: name}).to_json()
        with self._index_lock():
            index = self.read_index()
            manifests = [
                m
                for m in index["manifests"]
                if (m.get("annotations") or {}).get(REF_NAME_ANNOTATION) != name
            ]
            manifests.append(entry)
            manifests.sort(
                key=lambda m: (
                    m["annotations"].get(REF_NAME_ANNOTATION, "") if m.get("annotations") else "",
                    m["digest"],
                )
            )
            index["manifests"] = manifests
            self._write_index(index)

    def untag(self, name: str | ImageRef) -> bool:
        """Remove ``name`` from index.json; return whether it was there. Blobs stay until gc."""
        wanted = [self._normalize_name(name)]
        if isinstance(name, str) and name not in wanted:
            wanted.append(name)
        if not self.index_path.exists():
            return False
        with self._index_lock():
            index = self.read_index()
            for candidate in wanted:
                kept = [
                    m
                    for m in index["manifests"]
                    if (m.get("annotations") or {}).get(REF_NAME_ANNOTATION) != candidate
                ]
                if len(kept) != len(index["manifests"]):
                    index["manifests"] = kept
                    self._write_index(index)
                    return True
            return False

    def list_images(self) -> list[ImageEntry]:
        entries = []
        for raw in self.read_index()["manifests"]:
            desc = Descriptor.from_json(raw)
            name = desc.annotations.get(REF_NAME_ANNOTATION, "")
            entries.append(ImageEntry(name, desc))
        return sorted(entries, key=lambda e: (e.name, e.descriptor.digest))

    def lookup(self, name: str | ImageRef) -> Descriptor | None:
        """The descriptor ``name`` points at: the canonical reference, or (for layouts other
        tools wrote, e.g. skopeo's ``oci:DIR:latest``) the name exactly as written."""
        wanted = [self._normalize_name(name)]
        if isinstance(name, str) and name not in wanted:
            wanted.append(name)
        entries = self.list_images()
        for candidate in wanted:
            for entry in entries:
                if entry.name == candidate:
                    return entry.descriptor
        return None

    # -- resolution ---------------------------------------------------------------------------
    def resolve(self, ref: str | ImageRef, platform: Platform | None = None) -> ResolvedImage:
        """The image ``ref`` names, for ``platform`` (default: the host), from the cache only.
        Follows an image index to the platform's manifest. ImageNotFoundError when the image
        or any of its blobs is missing."""
        platform = platform or Platform.host()
        if isinstance(ref, str):
            try:
                parsed: ImageRef | None = ImageRef.parse(ref)
            except ProvisionError:
                parsed = None
            name = parsed.name if parsed else ref
        else:
            parsed, name = ref, ref.name
        desc = self.lookup(ref)
        if desc is None and parsed is not None and parsed.digest:
            desc = self._descriptor_for_digest(parsed.digest)
        if desc is None:
            raise ImageNotFoundError(
                f"image {name} is not in the cache ({self.root})",
                hint=f"pull it: provision cache pull {name}",
            )
        return self.resolve_descriptor(name, desc, platform)

    def _descriptor_for_digest(self, digest: str) -> Descriptor | None:
        for entry in self.list_images():
            if entry.descriptor.digest == digest:
                return entry.descriptor
        if not self.has_blob(digest):
            return None
        try:
            doc = self.read_json(digest)
        except ProvisionError:
            return None
        media = str(doc.get("mediaType") or "")
        if not media:
            media = MT_OCI_INDEX if "manifests" in doc else MT_OCI_MANIFEST
        return Descriptor(media, digest, self.blob_path(digest).stat().st_size)

    def resolve_descriptor(
        self, name: str, desc: Descriptor, platform: Platform | None = None
    ) -> ResolvedImage:
        platform = platform or Platform.host()
        index_digest: str | None = None
        seen = 0
        while True:
            if not self.has_blob(desc.digest):
                raise ImageNotFoundError(
                    f"image {name}: manifest {desc.digest} is not in the cache",
                    hint=f"pull it: provision cache pull {name}",
                )
            doc = self.read_json(desc.digest)
            media = str(doc.get("mediaType") or desc.media_type or "")
            if media in INDEX_MEDIA_TYPES or (not media and "manifests" in doc):
                seen += 1
                if seen > 4:
                    raise ProvisionError(f"image {name}: image indexes nested too deeply")
                index_digest = index_digest or desc.digest
                try:
                    desc = choose_manifest(doc, platform)
                except ImageNotFoundError as exc:
                    raise ImageNotFoundError(f"image {name}: {exc.message}", exc.hint) from None
                continue
            break
        if media not in MANIFEST_MEDIA_TYPES and "layers" not in doc:
            raise ProvisionError(
                f"image {name}: unsupported manifest media type {media!r}",
                hint="provision reads OCI and Docker schema 2 images",
            )
        config_desc = Descriptor.from_json(doc.get("config") or {})
        layers = tuple(Descriptor.from_json(layer) for layer in doc.get("layers") or ())
        missing = [d.digest for d in (config_desc, *layers) if not self.has_blob(d.digest)]
        if missing:
            raise ImageNotFoundError(
                f"image {name} is incomplete in the cache "
                f"({len(missing)} blob(s) missing, first {missing[0]})",
                hint=f"pull it again: provision cache pull {name}",
            )
        config = self.read_json(config_desc.digest)
        return ResolvedImage(
            name=name,
            digest=desc.digest,
            manifest=doc,
            config=config,
            layers=layers,
            config_digest=config_desc.digest,
            index_digest=index_digest,
            media_type=media or MT_OCI_MANIFEST,
            size=self.blob_path(desc.digest).stat().st_size,
        )

    # -- garbage collection ---------------------------------------------------------------------
    def referenced_blobs(self) -> set[str]:
        """Every blob reachable from index.json that is present in the store."""
        return self.reachable_blobs(Descriptor.from_json(m) for m in self.read_index()["manifests"])

    def reachable_blobs(self, roots: Iterable[Descriptor]) -> set[str]:
        """Every present blob reachable from ``roots`` (indexes, manifests, configs, layers)."""
        reachable: set[str] = set()
        pending = list(roots)
        while pending:
            desc = pending.pop()
            if desc.digest in reachable or not self.has_blob(desc.digest):
                continue
            reachable.add(desc.digest)
            if desc.media_type in (INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES) or (
                desc.size < 4 * CHUNK and desc.media_type in ("", "application/json")
            ):
                try:
                    doc = self.read_json(desc.digest)
                except ProvisionError:
                    continue
                for key in ("manifests", "layers"):
                    pending.extend(Descriptor.from_json(d) for d in doc.get(key) or ())
                config = doc.get("config")
                if isinstance(config, Mapping) and "digest" in config:
                    pending.append(Descriptor.from_json(config))
        return reachable

    def gc(self) -> int:
        """Delete every blob no name reaches, and leftover temp files. Returns bytes freed.
        Waits for concurrent writers (who hold :meth:`pinning`)."""
        if not (self.root / "blobs").is_dir():
            return 0
        freed = 0
        with self._flock(".gc.lock", fcntl.LOCK_EX), self._index_lock():
            keep = self.referenced_blobs()
            for algorithm_dir in (self.root / "blobs").iterdir():
                if not algorithm_dir.is_dir():
                    continue
                for blob in algorithm_dir.iterdir():
                    digest = f"{algorithm_dir.name}:{blob.name}"
                    if digest not in keep:
                        freed += blob.lstat().st_size
                        blob.unlink()
            ingest = self.root / ".ingest"
            if ingest.is_dir():
                for leftover in ingest.iterdir():
                    freed += leftover.lstat().st_size
                    leftover.unlink()
        return freed

    def disk_usage(self) -> int:
        blobs = self.root / "blobs"
        if not blobs.is_dir():
            return 0
        return sum(p.lstat().st_size for p in blobs.rglob("*") if p.is_file())


def _drop_if_empty(path: Path, fd: int) -> None:
    """Remove an empty partial download (nothing to resume), if it is still ours."""
    try:
        mine = os.fstat(fd)
        if mine.st_size == 0 and os.stat(path).st_ino == mine.st_ino:
            path.unlink()
    except FileNotFoundError:
        pass


def _cache_write_error(path: Path, exc: OSError) -> ProvisionError:
    return ProvisionError(
        f"cannot write {path}: {exc.strerror or exc}",
        hint="check the free space and permissions of the image cache ($PROVISION_CACHE)",
    )


class BlobDownload:
    """The bytes of one blob received so far (``offset`` of them, hashed as they arrive).
    Made by :meth:`ImageStore.download_blob`; the file descriptor belongs to it."""

    def __init__(self, store: ImageStore, digest: str, size: int, path: Path, fd: int) -> None:
        self.store, self.digest, self.size, self.path, self.fd = store, digest, size, path, fd
        self.algorithm = parse_digest(digest)[0]
        self.hash = hashlib.new(self.algorithm)
        self.offset = 0
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, CHUNK):
            self.hash.update(chunk)
            self.offset += len(chunk)
        self.inherited = self.offset  # bytes an earlier download left (not verified yet)

    def restart(self) -> None:
        """Start over from byte 0 (the server ignored the range, or the data was bad)."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.hash = hashlib.new(self.algorithm)
        self.offset = self.inherited = 0

    def write(self, data: bytes) -> None:
        if self.offset + len(data) > self.size:
            self.restart()
            raise DigestMismatchError(
                f"content for {self.digest} is larger than the expected {self.size} bytes"
            )
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError as exc:
            raise _cache_write_error(self.path, exc) from exc
        self.hash.update(data)
        self.offset += len(data)

    @property
    def complete(self) -> bool:
        return self.offset == self.size

    def commit(self) -> None:
        """Verify the whole blob against its digest and move it into the store; on a
        mismatch nothing is stored, the partial data is dropped and DigestMismatchError
        raised."""
        got = f"{self.algorithm}:{self.hash.hexdigest()}"
        if self.offset != self.size or got != self.digest:
            self.restart()
            raise DigestMismatchError(
                f"content does not match its digest: expected {self.digest} "
                f"({self.size} bytes), got {got} ({self.offset} bytes)",
                hint="the registry or the network corrupted the data; nothing was stored",
            )
        final = self.store.blob_path(self.digest)
        try:
            os.fsync(self.fd)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.fchmod(self.fd, 0o644)
            os.replace(self.path, final)
        except OSError as exc:
            raise _cache_write_error(final, exc) from exc
