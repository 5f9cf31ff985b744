"""The boto3 clients of the aws target, made in one place.

Credentials come only from boto3's own chain (environment, profiles, SSO, instance roles) and
endpoints from the SDK's standard settings (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_EC2``,
``_EBS``, ``_S3``, profiles' ``endpoint_url``), so local stand-ins and other partitions need
nothing special. Every request has a connect and a read time-out (a stalled upload is noticed
and retried).

Retries: botocore's own are off (one attempt per request); every call goes through
:func:`call`, which retries throttling, 5xx answers, time-outs and dropped connections with the
project's one policy (:mod:`provision.retry`: bounded attempts and time, back-off with jitter,
``Retry-After`` honoured), and turns what is left into an :class:`AwsError`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from provision.errors import ProvisionError, UsageError
from provision.retry import RetryLater, RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    from mypy_boto3_ebs import EBSClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_s3 import S3Client

CONNECT_TIMEOUT = 10.0  # seconds
READ_TIMEOUT = 60.0  # seconds without a byte from the service: the request is retried
RETRY = RetryPolicy(attempts=8, total=300.0, initial=0.5, maximum=20.0)
# AWS's throttling and transient codes (those botocore's standard mode knows, and EBS's own)
THROTTLING = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown",
    "EC2ThrottledException", "ConcurrentLimitExceededException",
})
TRANSIENT = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "InternalError",
                       "InternalFailure", "InternalServerException", "ServiceUnavailable", "Unavailable"})
DROPPED = (ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError)
T = TypeVar("T")


class AwsError(ProvisionError):
    """AWS refused or failed a request; the hint carries AWS's own message."""


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a botocore error (never anything from the request's credentials)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return str(error.get("Code", "Unknown")), str(error.get("Message", ""))
    return type(exc).__name__, str(exc)


def aws_error(doing: str, exc: BaseException) -> AwsError:
    """``AWS failed <doing>: <code>``, with AWS's message as the hint."""
    code, message = describe_error(exc)
    return AwsError(f"AWS failed {doing}: {code}", hint=message or None)


def error_code(exc: BaseException) -> str:
    return describe_error(exc)[0] if isinstance(exc, ClientError) else ""


def retry_later(exc: BaseException, also: Collection[str] = ()) -> RetryLater | None:
    """A RetryLater (with the server's Retry-After) when ``exc`` is worth another try."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode", 0) or 0)
        if code in THROTTLING or code in TRANSIENT or code in also or status >= 500:
            after = parse_retry_after(meta.get("HTTPHeaders", {}).get("retry-after"), time.time())
            return RetryLater(f"{code} (HTTP {status})", retry_after=after)
        return None
    if isinstance(exc, DROPPED):
        return RetryLater(type(exc).__name__)
    return None


def call(what: str, request: Callable[[], T], *, also: Collection[str] = (), passes: Collection[str] = (),
         policy: RetryPolicy = RETRY) -> T:
    """``request()`` under the retry policy; an AwsError naming ``what`` when it fails for good.
    ``also``: more error codes worth retrying for this request; ``passes``: codes the caller
    handles (their ClientError is raised as it is)."""

    def attempt() -> T:
        try:
            return request()
        except (ClientError, BotoCoreError) as exc:
            later = retry_later(exc, also)
            if later is None:
                raise
            raise later from exc

    try:
        return policy.call(attempt, what=what)
    except RetryLater as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        failure = aws_error(what, cause)
        raise AwsError(f"{failure.message} ({exc.gave_up})", hint=failure.hint) from None
    except (ClientError, BotoCoreError) as exc:
        if error_code(exc) in passes:
            raise
        raise aws_error(what, exc) from None


def client_config(pool: int = 10, read_timeout: float = READ_TIMEOUT) -> Config:
    return Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": 1},  # retried by call(), once
        max_pool_connections=max(10, pool),
        user_agent_extra="provision",
    )


class AwsClients:
    """One boto3 session and its clients (made on first use, one per service and region)."""

    def __init__(self, region: str | None = None, *, pool: int = 10, read_timeout: float = READ_TIMEOUT,
                 profile: str | None = None) -> None:
        try:
            self.session = boto3.session.Session(profile_name=profile)
        except BotoCoreError as exc:
            raise aws_error("to load the AWS configuration", exc) from None
        resolved = region or self.session.region_name
        if not resolved:
            raise UsageError("no AWS region", hint="pass --region, or set AWS_REGION (or a profile's region)")
        self.region: str = resolved
        self.config = client_config(pool, read_timeout)
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def check_credentials(self) -> None:
        """A UsageError before any work when boto3's chain finds no credentials."""
        if self.session.get_credentials() is None:
            raise UsageError("no AWS credentials found",
                             hint="configure them as for the AWS CLI: environment, a profile, SSO or an instance role")

    def _client(self, service: str, region: str | None) -> Any:
        key = (service, region or self.region)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self.session.client(service, region_name=key[1], config=self.config)  # type: ignore[call-overload]
                self._clients[key] = client
            return client

    def ec2(self, region: str | None = None) -> EC2Client:
        client: EC2Client = self._client("ec2", region)
        return client

    def ebs(self, region: str | None = None) -> EBSClient:
        client: EBSClient = self._client("ebs", region)
        return client

    def s3(self, region: str | None = None) -> S3Client:
        client: S3Client = self._client("s3", region)
        return client
