"""A client of the OCI distribution API (v2): pull into and push from the image store.

- Authentication: anonymous, bearer tokens (the ``WWW-Authenticate`` challenge), basic auth;
  credentials from the user's docker config (see :mod:`provision.oci.auth`).
- Transport: https, verified; plain http only for loopback hosts and hosts the user named as
  insecure (after https failed, as Docker does).
- Mirrors (pulls only) are tried in order before the registry itself.
- Every manifest and blob is checked against its digest before it is stored; blobs stream to
  disk and are renamed into place, so an interrupted pull leaves nothing corrupt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlencode, urljoin, urlsplit

import requests

from provision.errors import (
    DigestMismatchError,
    ImageNotFoundError,
    RegistryError,
)
from provision.oci.auth import (
    Credentials,
    CredentialStore,
    RegistryConfig,
    load_registry_config,
    parse_challenge,
)
from provision.oci.model import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    Platform,
    ResolvedImage,
    choose_manifest,
    parse_digest,
)
from provision.oci.store import ImageStore
from provision.reference import ImageRef

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
DEFAULT_CHUNK = 16 << 20
# (done bytes, total bytes) over the whole pull or push.
ProgressFn = Callable[[int, int], None]
Body = bytes | Callable[[], Any] | None


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


class _Progress:
    def __init__(self, total: int, callback: ProgressFn | None) -> None:
        self.total, self.done, self.callback = total, 0, callback

    def blob(self) -> Callable[[int, int | None], None]:
        start = self.done

        def report(done: int, _total: int | None) -> None:
            self.done = start + done
            if self.callback:
                self.callback(self.done, self.total)

        return report

    def skip(self, size: int) -> None:
        self.done += size
        if self.callback:
            self.callback(self.done, self.total)


class _ResponseReader:
    """read(n) over a streamed response body (decoded transfer/content encodings)."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.response.raw.read(None if size < 0 else size, decode_content=True)
        return data


class _UploadReader:
    """A sized, progress-reporting file body for requests (sent with Content-Length)."""

    def __init__(self, handle: IO[bytes], size: int, report: Callable[[int, int | None], None]):
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


def _describe_exception(exc: BaseException) -> str:
    """The innermost useful reason of a requests/urllib3 error ("connection refused")."""
    reason: BaseException | None = exc
    seen = 0
    while reason is not None and seen < 8:
        seen += 1
        if isinstance(reason, OSError) and reason.strerror:
            return reason.strerror.lower()
        inner = getattr(reason, "reason", None)
        if isinstance(inner, BaseException):
            reason = inner
            continue
        args = getattr(reason, "args", ())
        nested = next((a for a in args if isinstance(a, BaseException)), None)
        reason = nested or reason.__cause__ or reason.__context__
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return match.group(1).lower() if match else type(exc).__name__


def _registry_message(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)
    except (ValueError, AttributeError):
        text = response.text[:200].strip()
    return f"HTTP {response.status_code}" + (f" ({text})" if text else "")


class RegistryClient:
    """Talks to registries. Inject ``session``, ``config`` and ``credentials`` in tests."""

    def __init__(
        self,
        config: RegistryConfig | None = None,
        credentials: CredentialStore | None = None,
        session: requests.Session | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        chunk_size: int = DEFAULT_CHUNK,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config if config is not None else load_registry_config()
        self.credentials = credentials if credentials is not None else CredentialStore()
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", "provision")
        self.timeout = timeout
        self.retries = retries
        self.chunk_size = chunk_size
        self.sleep = sleep
        self._bases: dict[str, str] = {}
        self._tokens: dict[tuple[str, str], str] = {}
        self._basic: dict[str, str] = {}

    # -- endpoints -------------------------------------------------------------------------
    def base_url(self, registry: str) -> str:
        """The API root for ``registry`` (scheme://host[:port]), probing https first and
        falling back to http only where plain http is allowed."""
        if registry in self.config.endpoints:
            return self.config.endpoints[registry]
        if registry not in self._bases:
            self._bases[registry] = self._probe(registry)
        return self._bases[registry]

    def _probe(self, registry: str) -> str:
        https = f"https://{registry}"
        if not self.config.is_insecure(registry):
            return https
        try:
            self.session.get(f"{https}/v2/", timeout=5, verify=False, allow_redirects=False)
            return https
        except requests.exceptions.RequestException:
            return f"http://{registry}"

    def pull_endpoints(self, registry: str) -> list[str]:
        return [*self.config.mirrors.get(registry, ()), self.base_url(registry)]

    def _verify(self, url: str) -> bool:
        return not self.config.is_insecure(urlsplit(url).netloc)

    def _check_scheme(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and self.config.is_insecure(parts.netloc):
            return
        raise RegistryError(
            f"refusing plain http to {parts.netloc}",
            hint="plain http is only used for loopback hosts and registries named as insecure "
            "(PROVISION_INSECURE_REGISTRIES or the registries file)",
        )

    # -- requests with authentication --------------------------------------------------------
    def _auth_header(self, base: str, scope: str) -> str | None:
        return self._tokens.get((base, scope)) or self._basic.get(base)

    def _request(
        self,
        base: str,
        registry: str,
        method: str,
        url: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        body: Body = None,
        stream: bool = False,
        retry: bool = False,
    ) -> requests.Response:
        full = url if "://" in url else base + url
        self._check_scheme(full)
        same_host = urlsplit(full).netloc == urlsplit(base).netloc
        attempts = self.retries if retry else 1
        for attempt in range(attempts):
            try:
                response = self._send_authenticated(
                    base, registry, method, full, scope, headers, body, stream, same_host
                )
            except requests.exceptions.RequestException as exc:
                if attempt + 1 >= attempts:
                    raise RegistryError(
                        f"cannot reach {urlsplit(full).netloc} ({method} {urlsplit(full).path}): "
                        + _describe_exception(exc),
                        hint="check the network, the registry address and any mirrors configured",
                    ) from exc
                self.sleep(0.5 * 2**attempt)
                continue
            transient = response.status_code >= 500 or response.status_code == 429
            if retry and transient and attempt + 1 < attempts:
                response.close()
                self.sleep(0.5 * 2**attempt)
                continue
            return response
        raise AssertionError("unreachable")

    def _send_authenticated(
        self,
        base: str,
        registry: str,
        method: str,
        url: str,
        scope: str,
        headers: dict[str, str] | None,
        body: Body,
        stream: bool,
        same_host: bool,
    ) -> requests.Response:
        for attempt in range(2):
            sent = dict(headers or {})
            auth = self._auth_header(base, scope) if same_host else None
            if auth:
                sent["Authorization"] = auth
            data = body() if callable(body) else body
            response = self.session.request(
                method,
                url,
                headers=sent,
                data=data,
                stream=stream,
                timeout=(10, self.timeout),
                verify=self._verify(url),
            )
            if response.status_code != 401 or not same_host:
                return response
            if attempt == 1:
                response.close()
                self._raise_denied(base, registry, scope)
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            self._authenticate(base, registry, scope, challenge)
        raise AssertionError("unreachable")

    def _credentials_for(self, base: str, registry: str) -> Credentials | None:
        host = urlsplit(base).netloc
        return self.credentials.get(registry if base == self.base_url(registry) else host)

    def _raise_denied(self, base: str, registry: str, scope: str) -> None:
        who = (
            "with the configured credentials"
            if self._credentials_for(base, registry)
            else ("anonymously")
        )
        action = scope.rsplit(":", 1)[-1]
        raise RegistryError(
            f"{urlsplit(base).netloc} denied {action} access to "
            f"{scope.split(':')[1] if ':' in scope else scope} {who}",
            hint="check the credentials for this registry in ~/.docker/config.json (auths)",
        )

    def _authenticate(self, base: str, registry: str, scope: str, header: str) -> None:
        host = urlsplit(base).netloc
        creds = self._credentials_for(base, registry)
        challenge = parse_challenge(header) if header else None
        if challenge is None or challenge.scheme not in ("bearer", "basic"):
            raise RegistryError(
                f"{host} asks for authentication provision does not speak: "
                f"{header or 'no challenge'}"
            )
        if challenge.scheme == "basic":
            if creds is None:
                raise RegistryError(
                    f"{host} needs a user name and password",
                    hint="add credentials for it to ~/.docker/config.json (auths) or log in "
                    "with a docker-compatible tool",
                )
            self._basic[base] = creds.basic_header()
            return
        self._tokens[(base, scope)] = "Bearer " + self._fetch_token(
            host, challenge.params, scope, creds
        )

    def _fetch_token(self, host: str, params: Any, scope: str, creds: Credentials | None) -> str:
        realm = str(params.get("realm", ""))
        if not realm:
            raise RegistryError(f"{host}: bearer challenge without a realm")
        self._check_scheme(realm)
        scopes = [scope]
        if params.get("scope") and params["scope"] not in scopes:
            scopes.insert(0, str(params["scope"]))
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", str(params["service"])))
        query.extend(("scope", s) for s in scopes)
        try:
            if creds is not None and creds.identity_token:
                form = dict(query)
                form.update(
                    grant_type="refresh_token",
                    refresh_token=creds.identity_token,
                    client_id="provision",
                )
                response = self.session.post(
                    realm, data=form, timeout=(10, self.timeout), verify=self._verify(realm)
                )
            else:
                headers = {"Authorization": creds.basic_header()} if creds else {}
                url = realm + ("&" if "?" in realm else "?") + urlencode(query)
                response = self.session.get(
                    url, headers=headers, timeout=(10, self.timeout), verify=self._verify(realm)
                )
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"token request to {realm} failed: {exc}") from exc
        if response.status_code in (401, 403):
            raise RegistryError(
                f"{host}: the token service refused "
                + ("the credentials" if creds else "anonymous access"),
                hint=None if creds else "add credentials to ~/.docker/config.json (auths)",
            )
        if response.status_code != 200:
            raise RegistryError(f"token request to {realm}: {_registry_message(response)}")
        try:
            data = response.json()
        except ValueError as exc:
            raise RegistryError(f"token service {realm} did not answer JSON") from exc
        token = data.get("token") or data.get("access_token")
        if not token:
            raise RegistryError(f"token service {realm} answered without a token")
        return str(token)

    # -- pulling -------------------------------------------------------------------------------
    def fetch_manifest(self, base: str, ref: ImageRef, reference: str) -> FetchedManifest:
        """GET one manifest or index, checked against its digest."""
        scope = f"repository:{ref.repository}:pull"
        response = self._request(
            base,
            ref.registry,
            "GET",
            f"/v2/{ref.repository}/manifests/{reference}",
            scope=scope,
            headers={"Accept": ACCEPT_MANIFESTS},
            stream=True,
            retry=True,
        )
        with response:
            if response.status_code == 404:
                raise ImageNotFoundError(f"{ref.locator}:{reference} not found at {base}")
            if response.status_code != 200:
                raise RegistryError(
                    f"GET manifest {ref.locator}:{reference} from {base}: "
                    f"{_registry_message(response)}"
                )
            data = response.raw.read(MAX_MANIFEST_BYTES + 1, decode_content=True)
        if len(data) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"manifest {ref.locator}:{reference} is larger than 4 MiB")
        expected = reference if reference.startswith("sha") and ":" in reference else None
        header = response.headers.get("Docker-Content-Digest")
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
        manifest = FetchedManifest(data, "", digest)
        doc = manifest.document()
        media = str(doc.get("mediaType") or "")
        if not media:
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
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
        self,
        base: str,
        ref: ImageRef,
        desc: Descriptor,
        store: ImageStore,
        report: Callable[[int, int | None], None] | None = None,
    ) -> None:
        """Stream one blob into the store, verified against ``desc``."""
        if store.has_blob(desc.digest):
            return
        response = self._request(
            base,
            ref.registry,
            "GET",
            f"/v2/{ref.repository}/blobs/{desc.digest}",
            scope=f"repository:{ref.repository}:pull",
            stream=True,
            retry=True,
        )
        with response:
            if response.status_code == 404:
                raise ImageNotFoundError(f"blob {desc.digest} of {ref.locator} not found at {base}")
            if response.status_code != 200:
                raise RegistryError(
                    f"GET blob {desc.digest} of {ref.locator}: {_registry_message(response)}"
                )
            store.write_blob(
                _ResponseReader(response), desc.digest, expected_size=desc.size, progress=report
            )

    def pull(
        self,
        store: ImageStore,
        ref: ImageRef | str,
        platform: Platform | None = None,
        *,
        progress: ProgressFn | None = None,
    ) -> ResolvedImage:
        """Pull ``ref`` for ``platform`` (default: the host) into ``store`` and tag it."""
        ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
        platform = platform or Platform.host()
        endpoints = self.pull_endpoints(ref.registry)
        for position, base in enumerate(endpoints):
            try:
                return self._pull_from(base, store, ref, platform, progress)
            except (RegistryError, ImageNotFoundError) as exc:
                if position + 1 == len(endpoints):
                    raise
                log.warning("mirror %s failed for %s: %s; trying the next", base, ref, exc)
        raise AssertionError("unreachable")

    def _pull_from(
        self,
        base: str,
        store: ImageStore,
        ref: ImageRef,
        platform: Platform,
        progress: ProgressFn | None,
    ) -> ResolvedImage:
        with store.pinning():
            top = self.fetch_manifest(base, ref, ref.reference)
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
                    chosen = self.fetch_manifest(base, ref, desc.digest)
                    store.write_blob(chosen.data, chosen.digest)
            doc = chosen.document()
            config = Descriptor.from_json(doc.get("config") or {})
            blobs = [config, *(Descriptor.from_json(d) for d in doc.get("layers") or ())]
            missing = [b for b in dict.fromkeys(blobs) if not store.has_blob(b.digest)]
            tracker = _Progress(sum(b.size for b in missing), progress)
            for blob in missing:
                self.fetch_blob(base, ref, blob, store, tracker.blob())
            if progress and not missing:
                progress(0, 0)
            store.tag(ref.name, top.descriptor)
            return store.resolve_descriptor(ref.name, top.descriptor, platform)

    # -- pushing -------------------------------------------------------------------------------
    def push(
        self,
        store: ImageStore,
        source: ImageRef | str,
        target: ImageRef | str,
        *,
        progress: ProgressFn | None = None,
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
        base = self.base_url(target.registry)
        plan = list(self._push_plan(store, desc))
        blobs = list(dict.fromkeys(b for b in plan if b[1] == "blob"))
        tracker = _Progress(sum(d.size for d, _ in blobs), progress)
        for blob, kind in plan:
            if kind == "blob":
                self._upload_blob(base, store, target, blob, tracker)
            else:
                reference = target.reference if blob.digest == desc.digest else blob.digest
                self._put_manifest(base, store, target, blob, reference)
        return desc.digest

    def _push_plan(self, store: ImageStore, desc: Descriptor) -> Iterator[tuple[Descriptor, str]]:
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
                yield from self._push_plan(store, child)
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

    def _upload_blob(
        self, base: str, store: ImageStore, target: ImageRef, desc: Descriptor, tracker: _Progress
    ) -> None:
        repo = target.repository
        scope = f"repository:{repo}:pull,push"
        head = self._request(
            base,
            target.registry,
            "HEAD",
            f"/v2/{repo}/blobs/{desc.digest}",
            scope=scope,
            retry=True,
        )
        head.close()
        if head.status_code == 200:
            tracker.skip(desc.size)
            return
        start = self._request(
            base,
            target.registry,
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scope=scope,
            headers={"Content-Length": "0"},
        )
        start.close()
        if start.status_code != 202 or "Location" not in start.headers:
            raise RegistryError(
                f"cannot start upload to {target.locator}: {_registry_message(start)}"
            )
        location = urljoin(base + "/", start.headers["Location"])
        report = tracker.blob()
        body: Body
        if desc.size <= self.chunk_size:

            def monolithic() -> _UploadReader:
                return _UploadReader(store.open_blob(desc.digest), desc.size, report)

            body, headers = monolithic, {"Content-Type": "application/octet-stream"}
        else:
            location = self._upload_chunks(base, store, target, desc, location, report)
            body, headers = b"", {"Content-Length": "0"}
        finish = self._request(
            base,
            target.registry,
            "PUT",
            _with_digest(location, desc.digest),
            scope=scope,
            headers=headers,
            body=body,
        )
        finish.close()
        if finish.status_code != 201:
            raise RegistryError(
                f"upload of {desc.digest} to {target.locator} failed: {_registry_message(finish)}"
            )

    def _upload_chunks(
        self,
        base: str,
        store: ImageStore,
        target: ImageRef,
        desc: Descriptor,
        location: str,
        report: Callable[[int, int | None], None],
    ) -> str:
        scope = f"repository:{target.repository}:pull,push"
        offset = 0
        with store.open_blob(desc.digest) as handle:
            while True:
                chunk = handle.read(self.chunk_size)
                if not chunk:
                    return location
                end = offset + len(chunk) - 1
                response = self._request(
                    base,
                    target.registry,
                    "PATCH",
                    location,
                    scope=scope,
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
                        f"{_registry_message(response)}"
                    )
                location = urljoin(base + "/", response.headers.get("Location", location))
                offset = end + 1
                report(offset, desc.size)

    def _put_manifest(
        self, base: str, store: ImageStore, target: ImageRef, desc: Descriptor, reference: str
    ) -> None:
        data = store.read_blob(desc.digest)
        response = self._request(
            base,
            target.registry,
            "PUT",
            f"/v2/{target.repository}/manifests/{reference}",
            scope=f"repository:{target.repository}:pull,push",
            headers={"Content-Type": desc.media_type},
            body=data,
        )
        response.close()
        if response.status_code not in (200, 201):
            raise RegistryError(
                f"PUT manifest {target.locator}:{reference}: {_registry_message(response)}"
            )
        announced = response.headers.get("Docker-Content-Digest")
        if announced and announced != desc.digest:
            raise DigestMismatchError(
                f"registry stored manifest as {announced}, expected {desc.digest}"
            )


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})


def default_client() -> RegistryClient:
    return RegistryClient()


__all__: Sequence[str] = ["RegistryClient", "FetchedManifest", "ProgressFn", "default_client"]
