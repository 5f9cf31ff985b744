"""Talking HTTP to registries: endpoints, plain-http rules, authentication, retries.

- Endpoints: a registry's API is at ``https://NAME`` unless the registries file says
  otherwise (``endpoints:``) or it is Docker Hub (see :mod:`provision.oci.config`); mirrors
  come first for pulls.
- Transport: https, verified; plain http only for loopback hosts and hosts the user named as
  insecure (after https failed, as Docker does).
- Authentication: anonymous first; on a 401 the ``WWW-Authenticate`` challenge decides:
  bearer tokens from the token service, or basic auth, with the user's docker credentials
  (:mod:`provision.oci.auth`). Tokens are cached per endpoint and scope.
- Retries: idempotent requests go through the one retry policy (:mod:`provision.retry`):
  connection failures, 408/429/5xx answers, honouring ``Retry-After``. Safe to share between
  threads (the pull downloads blobs in parallel).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import requests
import requests.adapters
import urllib3

from provision.errors import RegistryError
from provision.oci.auth import Credentials, CredentialStore, parse_challenge
from provision.oci.config import RegistryConfig, load_registry_config
from provision.retry import RetryLater, RetryPolicy, parse_retry_after

T = TypeVar("T")
Body = bytes | Callable[[], Any] | None
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_RETRY = RetryPolicy(attempts=5, total=120.0, initial=0.5, maximum=10.0)


class Unreachable(RetryLater):
    """The request did not get an answer (refused, reset, timed out)."""


class TransientStatus(RetryLater):
    """The registry answered 408, 429 or 5xx; ``response`` is that answer (body read)."""

    def __init__(self, reason: str, response: requests.Response, retry_after: float | None):
        super().__init__(reason, retry_after)
        self.response = response


def speaks_tls(registry: str, timeout: float) -> bool:
    """Whether ``host[:port]`` (port 443 by default) completes a TLS handshake: how an
    insecure registry's scheme is chosen (https first, as Docker does). Certificates are not
    checked here (insecure registries are not verified), so no CA store is loaded."""
    parts = urlsplit(f"https://{registry}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    address = (parts.hostname or "", parts.port or 443)
    try:
        with (
            socket.create_connection(address, timeout) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname),
        ):
            return True
    except (OSError, ValueError):  # refused, reset, timed out, not TLS (ssl.SSLError)
        return False


def describe_exception(exc: BaseException) -> str:
    """The innermost useful reason of a requests/urllib3 error ("connection refused")."""
    reason: BaseException | None = exc
    seen = 0
    while reason is not None and seen < 8:
        seen += 1
        if isinstance(reason, http.client.IncompleteRead | urllib3.exceptions.IncompleteRead):
            return "the connection closed before the end of the body"
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


def registry_message(response: requests.Response) -> str:
    """``HTTP 503 (UNAVAILABLE: ...)`` from a registry's error answer."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)
    except (ValueError, AttributeError, requests.exceptions.RequestException):
        try:
            text = response.text[:200].strip()
        except requests.exceptions.RequestException:
            text = ""
    return f"HTTP {response.status_code}" + (f" ({text})" if text else "")


class RegistryTransport:
    """Authenticated, retried HTTP to registries. Inject ``session``, ``config``,
    ``credentials`` and ``retry`` (its clock) in tests."""

    def __init__(
        self,
        config: RegistryConfig | None = None,
        credentials: CredentialStore | None = None,
        session: requests.Session | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        connections: int = 16,
    ) -> None:
        self.config = config if config is not None else load_registry_config()
        self.credentials = credentials if credentials is not None else CredentialStore()
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=connections)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self.session = session
        self.session.headers.setdefault("User-Agent", "provision")
        self.timeout = timeout
        self.retry = retry or DEFAULT_RETRY
        self._lock = threading.Lock()
        self._bases: dict[str, str] = {}
        self._tokens: dict[tuple[str, str], str] = {}
        self._basic: dict[str, str] = {}

    # -- endpoints -------------------------------------------------------------------------
    def base_url(self, registry: str) -> str:
        """The API root for ``registry`` (scheme://host[:port]): the configured or built-in
        endpoint, else https, falling back to http only where plain http is allowed."""
        configured = self.config.endpoint(registry)
        if configured:
            return configured
        with self._lock:
            known = self._bases.get(registry)
        if known is None:
            known = self._probe(registry)
            with self._lock:
                self._bases[registry] = known
        return known

    def _probe(self, registry: str) -> str:
        https = f"https://{registry}"
        if not self.config.is_insecure(registry):
            return https
        return https if speaks_tls(registry, timeout=5.0) else f"http://{registry}"

    def pull_endpoints(self, registry: str) -> list[str]:
        """Where pulls of ``registry`` go, in order: its mirrors, then its API root."""
        return [*self.config.mirrors.get(registry, ()), self.base_url(registry)]

    def _verify(self, url: str) -> bool:
        return not self.config.is_insecure(urlsplit(url).netloc)

    def check_scheme(self, url: str) -> None:
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

    # -- requests ----------------------------------------------------------------------------
    def send(
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
        transient_status: bool = True,
    ) -> requests.Response:
        """One authenticated request (no retry). Raises :class:`Unreachable` when there is no
        answer and, with ``transient_status``, :class:`TransientStatus` on 408/429/5xx:
        both are :class:`RetryLater`, for a caller's own :meth:`call` loop."""
        full = url if "://" in url else base + url
        self.check_scheme(full)
        same_host = urlsplit(full).netloc == urlsplit(base).netloc
        where = f"{urlsplit(full).netloc} ({method} {urlsplit(full).path})"
        try:
            response = self._send_authenticated(
                base, registry, method, full, scope, headers, body, stream, same_host
            )
        except requests.exceptions.RequestException as exc:
            raise Unreachable(f"cannot reach {where}: {describe_exception(exc)}") from exc
        if transient_status and response.status_code in RETRY_STATUSES:
            with contextlib.suppress(requests.exceptions.RequestException):
                _ = response.content  # error bodies are small; keep them for the message
            response.close()
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), self.retry.clock.now()
            )
            raise TransientStatus(f"{where}: {registry_message(response)}", response, retry_after)
        return response

    def call(self, what: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` under the retry policy; when it gives up, a RegistryError says
        what failed last and why the retries ended."""
        try:
            return self.retry.call(attempt, what=what)
        except RetryLater as exc:
            raise RegistryError(
                f"{exc.reason} ({exc.gave_up})",
                hint="check the network, the registry address and any mirrors configured",
            ) from exc

    def request(
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
        """An authenticated request. With ``retry`` (idempotent requests only) transient
        failures are retried until the policy gives up (RegistryError); any other answer is
        returned whatever its status."""

        def once() -> requests.Response:
            return self.send(
                base,
                registry,
                method,
                url,
                scope=scope,
                headers=headers,
                body=body,
                stream=stream,
                transient_status=retry,
            )

        if not retry:
            try:
                return once()
            except RetryLater as exc:
                raise RegistryError(
                    exc.reason,
                    hint="check the network, the registry address and any mirrors configured",
                ) from exc
        return self.call(f"{method} {url}", once)

    def _auth_header(self, base: str, scope: str) -> str | None:
        with self._lock:
            return self._tokens.get((base, scope)) or self._basic.get(base)

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

    # -- authentication ------------------------------------------------------------------------
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
            with self._lock:
                self._basic[base] = creds.basic_header()
            return
        token = "Bearer " + self._fetch_token(host, challenge.params, scope, creds)
        with self._lock:
            self._tokens[(base, scope)] = token

    def _fetch_token(self, host: str, params: Any, scope: str, creds: Credentials | None) -> str:
        realm = str(params.get("realm", ""))
        if not realm:
            raise RegistryError(f"{host}: bearer challenge without a realm")
        self.check_scheme(realm)
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
            raise RegistryError(
                f"token request to {realm} failed: {describe_exception(exc)}"
            ) from exc
        if response.status_code in (401, 403):
            raise RegistryError(
                f"{host}: the token service refused "
                + ("the credentials" if creds else "anonymous access"),
                hint=None if creds else "add credentials to ~/.docker/config.json (auths)",
            )
        if response.status_code != 200:
            raise RegistryError(f"token request to {realm}: {registry_message(response)}")
        try:
            data = response.json()
        except ValueError as exc:
            raise RegistryError(f"token service {realm} did not answer JSON") from exc
        token = data.get("token") or data.get("access_token")
        if not token:
            raise RegistryError(f"token service {realm} answered without a token")
        return str(token)
