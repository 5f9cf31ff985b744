"""The Google Cloud clients provision uses, built one way: credentials from the SDK's own chain,
an optional API endpoint (a private endpoint, or a local stand-in in tests), the REST transport,
no SDK-side retries (the engine and :mod:`provision.retry` decide), and every API failure mapped
to the error class that decides what happens next.

Credentials, in order: anonymous when asked (local stand-ins only); ``GOOGLE_OAUTH_ACCESS_TOKEN``
(an access token, as Terraform's Google provider reads it); otherwise
``google.auth.default()`` (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's application-default
login, the metadata server's service account, workload identity). Tokens are never printed:
messages carry GCP's error text and the URL, never a header.

Long-running operations are waited on with a GlobalOperationsClient / ZoneOperationsClient
built with the same options: ``ExtendedOperation.result()`` would poll through a client made
without them (the real host).

google-cloud-compute is imported only when a Compute SDK client is first used (importing it
takes 1.5-2.5 s: proto-plus builds every Compute type). :class:`GceClients` makes its SDK
clients on first use; images.list, the one call a rerun of ``provision push gcp`` makes, goes
over the same credentials as a plain REST call (:mod:`.image_list`), and the SDK is then only
used for images.insert/deprecate, operation waits and instances.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials, Credentials

from provision.errors import ProvisionError
from provision.reconcile.provider import (
    OutcomeUnknownError,
    ProviderError,
    RateLimitedError,
    TransientProviderError,
)
from provision.retry import RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud import compute_v1

T = TypeVar("T")
API_ROOT = "https://compute.googleapis.com"  # the SDK's default endpoint
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
TOKEN_VARIABLE = "GOOGLE_OAUTH_ACCESS_TOKEN"
RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})


def credentials(anonymous: bool = False) -> Credentials:
    """The credentials of the standard chain (see the module docstring)."""
    if anonymous:
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    token = os.environ.get(TOKEN_VARIABLE)
    if token:
        from google.oauth2.credentials import Credentials as TokenCredentials

        return TokenCredentials(token.strip())  # type: ignore[no-untyped-call]
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        found, _project = google.auth.default(scopes=[CLOUD_PLATFORM])
    except DefaultCredentialsError as exc:
        raise ProvisionError(
            "no Google Cloud credentials found",
            hint=f"run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS "
            f"to a service-account key file, or set {TOKEN_VARIABLE}",
        ) from exc
    creds: Credentials = found
    return creds


class GceClients:
    """Compute Engine clients sharing one endpoint and one set of credentials: the SDK's
    (REST transport), each made on first use, and an authorized session for the calls made
    without the SDK (:mod:`.image_list`). ``policy``: how those calls are retried."""

    def __init__(
        self, endpoint: str | None, creds: Credentials, policy: RetryPolicy | None = None
    ) -> None:
        self.endpoint = endpoint
        self.credentials = creds
        self.policy = policy or RetryPolicy()
        self._made: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def api_root(self) -> str:
        """Where requests go, as the SDK's REST transport builds it (``http://`` or
        ``https://`` as given, else ``https://``)."""
        if not self.endpoint:
            return API_ROOT
        root = self.endpoint.rstrip("/")
        return root if root.startswith(("http://", "https://")) else f"https://{root}"

    def _sdk(self, kind: str) -> Any:
        with self._lock:
            if kind not in self._made:
                from google.api_core.client_options import ClientOptions
                from google.cloud import compute_v1

                options = ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
                self._made[kind] = getattr(compute_v1, kind)(
                    credentials=self.credentials, transport="rest", client_options=options
                )
            return self._made[kind]

    @property
    def images(self) -> compute_v1.ImagesClient:
        client: compute_v1.ImagesClient = self._sdk("ImagesClient")
        return client

    @property
    def instances(self) -> compute_v1.InstancesClient:
        client: compute_v1.InstancesClient = self._sdk("InstancesClient")
        return client

    @property
    def global_operations(self) -> compute_v1.GlobalOperationsClient:
        client: compute_v1.GlobalOperationsClient = self._sdk("GlobalOperationsClient")
        return client

    @property
    def zone_operations(self) -> compute_v1.ZoneOperationsClient:
        client: compute_v1.ZoneOperationsClient = self._sdk("ZoneOperationsClient")
        return client

    @property
    def session(self) -> AuthorizedSession:
        """google-auth's requests session with these credentials (what the SDK's REST transport
        sends through)."""
        with self._lock:
            if "session" not in self._made:
                from google.auth.transport.requests import AuthorizedSession

                self._made["session"] = AuthorizedSession(self.credentials)  # type: ignore[no-untyped-call]
            session: AuthorizedSession = self._made["session"]
            return session


def gce_clients(endpoint: str | None, creds: Credentials) -> GceClients:
    return GceClients(endpoint, creds)


def _reasons(exc: gexc.GoogleAPICallError) -> set[str]:
    found: set[str] = set()
    for error in exc.errors or []:
        if isinstance(error, dict) and isinstance(error.get("reason"), str):
            found.add(error["reason"])
    return found


def _retry_after(exc: gexc.GoogleAPICallError) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    return parse_retry_after(value, time.time())


def map_error(exc: BaseException, what: str) -> ProviderError:
    """The provider error for a failed call: 429 (and GCE's 403 rate-limit reasons) rate limited,
    5xx and dropped connections transient, a time-out after sending outcome-unknown, anything
    else (quota, permission, bad request) permanent with GCP's own message as the hint."""
    if isinstance(exc, requests.Timeout | gexc.DeadlineExceeded | TimeoutError):
        return OutcomeUnknownError(f"{what}: no answer in time (it may have taken effect)")
    if isinstance(exc, requests.ConnectionError):
        return TransientProviderError(f"{what}: connection failed ({type(exc).__name__})")
    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.code or 0
        if code == 429 or (code == 403 and _reasons(exc) & RATE_REASONS):
            return RateLimitedError(f"{what}: rate limited (HTTP {code})", _retry_after(exc))
        if code >= 500 or isinstance(exc, gexc.ServerError):
            return TransientProviderError(f"{what}: HTTP {code} {exc.message}", _retry_after(exc))
        hint = exc.message
        if "quotaExceeded" in _reasons(exc) or "Quota" in exc.message:
            hint = f"{exc.message} (ask for more quota, or use a smaller machine type or another region)"
        elif code == 403:
            hint = f"{exc.message} (grant the caller's service account that permission; see terraform/gcp)"
        return ProviderError(f"{what}: HTTP {code} {type(exc).__name__}", hint=hint)
    if isinstance(exc, ProviderError):
        return exc
    return ProviderError(f"{what}: {type(exc).__name__}: {exc}")


def call(what: str, attempt: Callable[[], T]) -> T:
    """``attempt()``, its failures mapped by :func:`map_error`."""
    try:
        return attempt()
    except (gexc.GoogleAPICallError, requests.RequestException, TimeoutError) as exc:
        raise map_error(exc, what) from None


def operation_error(op: compute_v1.Operation) -> str | None:
    """The operation's error text, or None when it has none."""
    if op.error and op.error.errors:
        return "; ".join(f"{e.code}: {e.message}" for e in op.error.errors)
    return None


def wait_operation(
    clients: GceClients,
    project: str,
    op: Any,
    *,
    zone: str | None,
    timeout: float,
    request_timeout: float,
    what: str,
) -> compute_v1.Operation:
    """Wait for operation ``op`` (an ExtendedOperation or Operation) with the operations client
    of its scope, at most ``timeout`` seconds; a ProviderError with the operation's error as
    soon as it fails. An operation that is DONE when it is returned is not asked again; between
    ``wait`` calls that come back before it is done, a short pause growing to 1 s."""
    from google.cloud import compute_v1

    name = str(op.name)
    deadline = time.monotonic() + timeout
    pause = 0.05
    current: compute_v1.Operation = compute_v1.Operation(
        name=name, status=op.status, target_link=op.target_link, error=op.error
    )
    while current.status != compute_v1.Operation.Status.DONE:
        if zone is None:
            current = call(
                f"{what}: waiting",
                lambda: clients.global_operations.wait(
                    project=project, operation=name, retry=None, timeout=request_timeout
                ),
            )
        else:
            current = call(
                f"{what}: waiting",
                lambda: clients.zone_operations.wait(
                    project=project, zone=zone, operation=name, retry=None, timeout=request_timeout
                ),
            )
        if current.status == compute_v1.Operation.Status.DONE:
            break
        if time.monotonic() >= deadline:
            raise ProviderError(
                f"{what}: operation {name} still {current.status.name} after {timeout:g} s",
                hint="it may finish later; run again to pick it up",
            )
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(1.0, pause * 2)
    failed = operation_error(current)
    if failed:
        raise ProviderError(f"{what}: operation {name} failed", hint=failed)
    return current
