"""The clients a push uses, and how its calls are retried.

The clients are made with :func:`.session.client_config` (the one botocore configuration of the
aws target: botocore's own retries off, connect and read time-outs), with a connection pool as
large as the push's concurrency. Credentials come only from boto3's own chain and endpoints from
the SDK's settings (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_EC2`` / ``_EBS`` / ``_S3``, the
profile's ``endpoint_url``), or the provider's ``endpoint`` option for a cluster's publish.

Every call goes through :func:`call`: its failure is classified once (:func:`.session.
classify_error`); throttling, 5xx, time-outs and dropped connections are retried with the
project's one retry policy (:mod:`provision.retry`: bounded attempts and time, back-off with
jitter, ``Retry-After`` waited exactly). Every call a push makes is safe to repeat: creations
carry a ClientToken or are recognised on a retry. What is left becomes an :class:`AwsError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from provision.errors import ProvisionError, UsageError
from provision.providers.aws.session import SessionSettings, classify_error, client_config
from provision.reconcile.provider import TransientProviderError
from provision.retry import RetryLater, RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_ebs import EBSClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_s3 import S3Client

READ_TIMEOUT = 60.0  # seconds without an answer: the request is abandoned and retried
RETRY = RetryPolicy(attempts=8, total=300.0, initial=0.5, maximum=20.0)
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


def call(
    what: str,
    request: Callable[[], T],
    *,
    also: Collection[str] = (),
    passes: Collection[str] = (),
    policy: RetryPolicy = RETRY,
) -> T:
    """``request()`` under the retry policy; an AwsError naming ``what`` when it fails for good.
    ``also``: more error codes worth retrying for this request; ``passes``: codes the caller
    handles (their ClientError is raised as it is)."""

    def attempt() -> T:
        try:
            return request()
        except (ClientError, BotoCoreError) as exc:
            code = error_code(exc)
            if code in passes:
                raise
            if code in also:
                raise RetryLater(code) from exc
            classified = classify_error(what, exc)
            if isinstance(classified, TransientProviderError):  # throttled, 5xx, time-out, dropped
                raise RetryLater(classified.message, retry_after=classified.retry_after) from exc
            raise

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


class AwsClients:
    """One boto3 session and its clients (made on first use, one per service and region)."""

    def __init__(
        self,
        region: str | None = None,
        *,
        pool: int = 10,
        read_timeout: float = READ_TIMEOUT,
        profile: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        try:
            self.session = boto3.session.Session(profile_name=profile)
        except BotoCoreError as exc:
            raise aws_error("to load the AWS configuration", exc) from None
        resolved = region or self.session.region_name
        if not resolved:
            raise UsageError(
                "no AWS region", hint="pass --region, or set AWS_REGION (or a profile's region)"
            )
        self.region: str = resolved
        self.settings = SessionSettings(resolved, profile, endpoint, read_timeout=read_timeout)
        self.pool = max(10, pool)
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, settings: SessionSettings, *, pool: int = 10) -> AwsClients:
        """The clients for a cluster provider's settings (its region, profile and endpoint)."""
        return cls(
            settings.region,
            pool=pool,
            read_timeout=max(settings.read_timeout, READ_TIMEOUT),
            profile=settings.profile,
            endpoint=settings.endpoint,
        )

    def check_credentials(self) -> None:
        """A UsageError before any work when boto3's chain finds no credentials."""
        if self.session.get_credentials() is None:
            raise UsageError(
                "no AWS credentials found",
                hint="configure them as for the AWS CLI: environment, a profile, SSO or an instance role",
            )

    def _config(self, region: str) -> Config:
        return client_config(replace(self.settings, region=region)).merge(
            Config(max_pool_connections=self.pool)
        )

    def _client(self, service: str, region: str | None) -> Any:
        key = (service, region or self.region)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                endpoint = (
                    self.settings.endpoint if service == "ec2" else None
                )  # the option names an EC2 endpoint
                make: Any = (
                    self.session.client
                )  # boto3's overloads are per service name; ours is a variable
                client = make(
                    service, region_name=key[1], config=self._config(key[1]), endpoint_url=endpoint
                )
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
