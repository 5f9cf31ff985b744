"""The boto3 clients of the aws target, made in ONE place, and the mapping of their failures
onto the error classes that decide the engine's retries.

Credentials come only from boto3's own chain (``profile`` option, environment, shared files,
SSO, instance roles); endpoints from the SDK's standard settings (``AWS_ENDPOINT_URL``,
``AWS_ENDPOINT_URL_EC2``...) unless the ``endpoint`` option names one. botocore's own retries
are switched off (one attempt): the engine retries by error class with its own back-off, and
two retry loops would multiply each other's attempts. Every request has connect and read
time-outs, so a stalled call is noticed (and reported as an unknown outcome).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config

from provision.reconcile.provider import (
    OutcomeUnknownError,
    ProviderError,
    RateLimitedError,
    TransientProviderError,
)

T = TypeVar("T")

THROTTLING = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "ConcurrentLimitExceededException",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
    }
)
SERVER_SIDE = frozenset({"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"})


@dataclass(frozen=True)
class SessionSettings:
    """How to reach AWS: the region, an optional profile and endpoint, the time-outs."""

    region: str
    profile: str | None = None
    endpoint: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 30.0


def client_config(settings: SessionSettings) -> Config:
    """botocore's configuration for every client: no retries of its own, bounded waits."""
    return Config(
        region_name=settings.region,
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        user_agent_extra="provision",
    )


def create_client(settings: SessionSettings, service: str) -> Any:
    """A boto3 client for ``service`` (``ec2``, ``ebs``, ``s3``) made with :func:`client_config`."""
    try:
        session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
    except botocore.exceptions.ProfileNotFound as exc:
        raise ProviderError(
            f"aws: {exc}", hint="name a profile of your AWS config, or drop the profile option"
        ) from exc
    make: Any = session.client  # boto3's overloads are per service name; ours is a variable
    return make(service, config=client_config(settings), endpoint_url=settings.endpoint or None)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def classify_error(action: str, exc: Exception) -> ProviderError:
    """The engine's error class for a failed AWS call (the message never carries credentials:
    botocore's errors name the action, the code and AWS's message only)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or code
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode", 0) or 0)
        if code in THROTTLING or status == 429:
            return RateLimitedError(
                f"aws {action}: throttled ({code})",
                retry_after=_retry_after(meta.get("HTTPHeaders", {})),
            )
        if status >= 500 or code in SERVER_SIDE:
            return TransientProviderError(
                f"aws {action}: {code or status} ({message})",
                retry_after=_retry_after(meta.get("HTTPHeaders", {})),
            )
        return ProviderError(f"aws {action}: {code}", hint=message)
    if isinstance(
        exc, botocore.exceptions.ReadTimeoutError | botocore.exceptions.ConnectionClosedError
    ):
        return OutcomeUnknownError(
            f"aws {action}: no answer in time after the request was sent ({type(exc).__name__})"
        )
    if isinstance(
        exc, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.EndpointConnectionError
    ):
        return TransientProviderError(
            f"aws {action}: cannot reach the endpoint ({type(exc).__name__})"
        )
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return ProviderError(
            f"aws {action}: no credentials",
            hint="set them the AWS way: a profile, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, SSO or an instance role",
        )
    if isinstance(exc, botocore.exceptions.HTTPClientError):
        return OutcomeUnknownError(f"aws {action}: the connection failed ({type(exc).__name__})")
    return ProviderError(f"aws {action}: {type(exc).__name__}", hint=str(exc))


def call_aws(action: str, call: Callable[..., T], **params: Any) -> T:
    """``call(**params)`` with botocore's failures turned into the engine's error classes."""
    try:
        return call(**params)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise classify_error(action, exc) from exc
