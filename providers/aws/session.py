"""The boto3 clients of the aws target, made in one place.

Credentials come only from boto3's own chain (environment, profiles, SSO, instance roles) and
endpoints from the SDK's standard settings (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_EC2``,
``_EBS``, ``_S3``, profiles' ``endpoint_url``), so local stand-ins and other partitions need
nothing special. Every request has a connect and a read time-out (a stalled upload is noticed
and retried), and botocore's retries (standard mode: throttling, 5xx, time-outs, with
back-off) are configured here once; nothing else in the target retries what botocore retries.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from provision.errors import ProvisionError, UsageError

if TYPE_CHECKING:
    from mypy_boto3_ebs import EBSClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_s3 import S3Client

CONNECT_TIMEOUT = 10.0  # seconds
READ_TIMEOUT = 60.0  # seconds without a byte from the service: the request is retried
MAX_ATTEMPTS = 8  # botocore's, per request (the first try included)


class AwsError(ProvisionError):
    """AWS refused or failed a request; the hint carries AWS's own message."""


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a botocore error (never anything from the request's credentials)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return str(error.get("Code", "Unknown")), str(error.get("Message", ""))
    return type(exc).__name__, str(exc)


def aws_error(doing: str, exc: BaseException) -> AwsError:
    code, message = describe_error(exc)
    return AwsError(f"AWS failed {doing}: {code}", hint=message or None)


def error_code(exc: BaseException) -> str:
    return describe_error(exc)[0] if isinstance(exc, ClientError) else ""


def client_config(pool: int = 10, read_timeout: float = READ_TIMEOUT) -> Config:
    return Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
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
