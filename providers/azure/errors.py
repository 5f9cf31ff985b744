"""Azure's failures as provision's error classes: the class decides whether to retry.

- 429 (throttled) -> :class:`RateLimitedError` carrying ``Retry-After``;
- 5xx, a connection that failed before the request was sent -> :class:`TransientProviderError`;
- a time-out or a dropped connection after the request was sent -> :class:`OutcomeUnknownError`
  (the same deterministic name makes the retry safe);
- anything else (quota, authorization, a bad request) -> :class:`ProviderError`, Azure's own
  message as the hint.
Azure's messages never carry credentials; tokens live only in request headers, which are
neither logged unredacted (azure-core redacts ``Authorization``) nor put in any message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from provision.errors import ProvisionError
from provision.reconcile.provider import (
    OutcomeUnknownError,
    ProviderError,
    RateLimitedError,
    TransientProviderError,
)
from provision.retry import RetryLater, RetryPolicy, parse_retry_after

T = TypeVar("T")


class AzurePublishError(ProvisionError):
    """A push to Azure failed (the upload, the image, the gallery version)."""


def status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None) if isinstance(exc, HttpResponseError) else None


def error_code(exc: BaseException) -> str:
    """Azure's error code (``QuotaExceeded``, ``AuthorizationFailed``...), or ''."""
    error: Any = getattr(exc, "error", None)
    code = getattr(error, "code", None) or getattr(exc, "error_code", None)
    return str(code) if code else ""


def azure_message(exc: BaseException) -> str:
    """Azure's own message, one line, without the SDK's request dump."""
    error: Any = getattr(exc, "error", None)
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split("\n")[0].split())


def retry_after_of(exc: BaseException) -> float | None:
    response: Any = getattr(exc, "response", None)
    headers: Any = getattr(response, "headers", None) or {}
    return parse_retry_after(headers.get("Retry-After"), time.time())


def is_transient(exc: BaseException) -> bool:
    status = status_of(exc)
    if status is not None:
        return status == 429 or status >= 500
    return isinstance(exc, ServiceRequestError | ServiceResponseError)


def as_retry(exc: BaseException, what: str) -> BaseException:
    """A transient failure as the :class:`RetryLater` the shared retry policy retries."""
    if is_transient(exc):
        return RetryLater(f"{what}: {describe(exc)}", retry_after_of(exc))
    return exc


def call_retried(policy: RetryPolicy, what: str, action: Callable[[], T]) -> T:
    """``action()`` under ``policy``: transient SDK failures retried, a 404 raised at once, and
    what the policy gives up on raised (the last SDK error or a RetryLater)."""

    def attempt() -> T:
        try:
            return action()
        except ResourceNotFoundError:
            raise
        except AzureError as exc:
            raise as_retry(exc, what) from exc

    return policy.call(attempt, what=what)


def describe(exc: BaseException) -> str:
    status = status_of(exc)
    code = error_code(exc)
    head = " ".join(str(p) for p in (status, code) if p)
    return f"{head}: {azure_message(exc)}" if head else azure_message(exc)


def provider_error(exc: AzureError, what: str) -> ProviderError:
    """The provider error class for an Azure SDK failure of ``what`` (``create vm web-1``)."""
    status = status_of(exc)
    if status == 429:
        return RateLimitedError(f"{what}: throttled ({describe(exc)})", retry_after_of(exc))
    if status is not None and status >= 500:
        return TransientProviderError(f"{what}: {describe(exc)}", retry_after_of(exc))
    if isinstance(exc, ServiceResponseError):  # sent; no answer (time-out, reset)
        return OutcomeUnknownError(
            f"{what}: no answer after the request was sent ({azure_message(exc)})"
        )
    if isinstance(exc, ServiceRequestError):  # never sent
        return TransientProviderError(f"{what}: could not reach Azure ({azure_message(exc)})")
    return ProviderError(
        f"{what}: Azure refused ({status or ''} {error_code(exc)})".replace("( ", "("),
        hint=azure_message(exc),
    )
