"""The Azure SDK clients provision uses, made in one place.

Credentials come from azure-identity's ``DefaultAzureCredential`` chain (environment, workload
identity, managed identity, the Azure CLI's login) unless a caller injects a ``TokenCredential``
(tests do), or ``PROVISION_AZURE_TOKEN`` holds a bearer token (from ``az account
get-access-token``). Blob storage also takes ``AZURE_STORAGE_CONNECTION_STRING``. The SDKs' own
retries are off: provision's retry policy and the reconcile engine decide. No credential is ever
logged: azure-core's HTTP logging redacts ``Authorization`` and provision never prints a token.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from azure.core.credentials import AccessToken, TokenCredential
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient
from azure.storage.blob import BlobServiceClient, ContainerClient

ARM_SCOPE = "https://management.azure.com/.default"
TOKEN_ENV = "PROVISION_AZURE_TOKEN"
ARM_ENDPOINT_ENV = "PROVISION_AZURE_ARM_ENDPOINT"  # a sovereign cloud's ARM, or a local stand-in
BLOB_ENDPOINT_ENV = (
    "PROVISION_AZURE_BLOB_ENDPOINT"  # the storage account's blob URL when not the public one
)
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"


class StaticTokenCredential:
    """A bearer token given as is (``PROVISION_AZURE_TOKEN``); it expires when Azure says."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)

    def __repr__(self) -> str:  # never the token
        return "StaticTokenCredential(<redacted>)"


class _LoopbackBearer(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Adds the bearer token over plain http, which azure-core refuses: only ever used for an
    ARM endpoint on the loopback interface (a local stand-in)."""

    def __init__(self, credential: TokenCredential) -> None:
        self.credential = credential

    def on_request(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
        token = self.credential.get_token(ARM_SCOPE).token
        request.http_request.headers["Authorization"] = f"Bearer {token}"


def is_loopback(url: str) -> bool:
    return url.startswith(("http://127.0.0.1:", "http://localhost:", "http://[::1]:"))


def default_credential() -> TokenCredential:
    token = os.environ.get(TOKEN_ENV)
    if token:
        return StaticTokenCredential(token)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


@dataclass
class ArmClients:
    compute: ComputeManagementClient
    network: NetworkManagementClient
    subscription: str


def arm_clients(
    subscription: str,
    credential: TokenCredential | None = None,
    endpoint: str | None = None,
    *,
    timeout: float = 60.0,
    polling_interval: float | None = None,
) -> ArmClients:
    """Compute and network clients for ``subscription`` (ARM at ``endpoint``, else
    ``$PROVISION_AZURE_ARM_ENDPOINT``, else the public cloud), with the SDK's retries off and
    every request bounded by ``timeout`` seconds."""
    credential = credential or default_credential()
    endpoint = endpoint or os.environ.get(ARM_ENDPOINT_ENV) or None
    kwargs: dict[str, Any] = {"retry_total": 0, "connection_timeout": 10, "read_timeout": timeout}
    if polling_interval is not None:
        kwargs["polling_interval"] = polling_interval
    if endpoint:
        kwargs["base_url"] = endpoint.rstrip("/")
        if is_loopback(endpoint):
            kwargs["authentication_policy"] = _LoopbackBearer(credential)
            kwargs.setdefault("polling_interval", 0)
    return ArmClients(
        ComputeManagementClient(credential, subscription, **kwargs),
        NetworkManagementClient(credential, subscription, **kwargs),
        subscription,
    )


def blob_container(
    account: str,
    container: str,
    credential: TokenCredential | None = None,
    endpoint: str | None = None,
) -> ContainerClient:
    """The container client: ``AZURE_STORAGE_CONNECTION_STRING`` when set, else the account's
    blob endpoint (``endpoint``, ``$PROVISION_AZURE_BLOB_ENDPOINT`` or the public one) with the
    token credential. SDK retries off (provision retries each page itself)."""
    kwargs: dict[str, Any] = {"retry_total": 0, "connection_timeout": 10, "read_timeout": 120}
    connection = os.environ.get(CONNECTION_STRING_ENV)
    if connection:
        service = BlobServiceClient.from_connection_string(connection, **kwargs)
    else:
        url = (
            endpoint
            or os.environ.get(BLOB_ENDPOINT_ENV)
            or f"https://{account}.blob.core.windows.net"
        )
        service = BlobServiceClient(url, credential=credential or default_credential(), **kwargs)
    return service.get_container_client(container)
