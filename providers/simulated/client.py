"""The Provider that reaches a simulated cloud over HTTP (``type: simulated-http``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import requests

from provision.providers.simulated.cloud import instance_from_json
from provision.reconcile.provider import (
    CreateRequest,
    HealthState,
    Instance,
    OutcomeUnknownError,
    Page,
    ProviderError,
    RateLimitedError,
    StaleEpochError,
    TransientProviderError,
)

T = TypeVar("T")


class HttpSimulatedProvider:
    """The Provider that talks to :func:`serve_simulated_cloud` (``options: {url: ...}``)."""

    def __init__(self, url: str, name: str = "simulated-http", timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self.timeout = timeout
        self._session = requests.Session()

    def _check(self, response: requests.Response, what: str) -> Any:
        code = response.status_code
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ProviderError(
                f"{what}: {self.url} did not answer as the simulated cloud API (HTTP {code})",
                hint="options.url must be the address `python -m provision.providers.simulated.server` prints",
            )
        message = f"{what}: HTTP {code}: {body.get('error', '')}"
        if code == 504:
            raise OutcomeUnknownError(message)
        if code == 429:
            raise RateLimitedError(message, retry_after=body.get("retry_after"))
        if code >= 500:
            raise TransientProviderError(message)
        if code == 409:
            raise StaleEpochError(message)
        if code >= 400:
            raise ProviderError(message)
        return body

    def _answer(self, what: str, read: Callable[[], T]) -> T:
        """``read()`` of a JSON answer; one that is not shaped as the API's is a ProviderError."""
        try:
            return read()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderError(
                f"{what}: {self.url} did not answer as the simulated cloud API ({exc!r})"
            ) from exc

    def create_instance(self, request: CreateRequest) -> Instance:
        payload = {
            "key": request.key,
            "name": request.name,
            "image": request.image,
            "properties": dict(request.properties),
            "tags": dict(request.tags),
            "epoch": request.epoch,
        }
        try:
            response = self._session.post(
                f"{self.url}/v1/instances", json=payload, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise OutcomeUnknownError(f"create {request.key}: {exc}") from exc
        body = self._check(response, f"create {request.key}")
        return self._answer(f"create {request.key}", lambda: instance_from_json(body))

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        params: list[tuple[str, str]] = [("tag", f"{k}={v}") for k, v in tags.items()]
        if page_token:
            params.append(("page_token", page_token))
        try:
            response = self._session.get(
                f"{self.url}/v1/instances", params=params, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise TransientProviderError(f"list: {exc}") from exc
        body = self._check(response, "list")
        return self._answer(
            "list",
            lambda: Page(
                tuple(instance_from_json(i) for i in body["instances"]), body.get("next_token")
            ),
        )

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        try:
            response = self._session.delete(
                f"{self.url}/v1/instances/{instance_id}",
                params={"epoch": epoch},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise TransientProviderError(f"destroy {instance_id}: {exc}") from exc
        self._check(response, f"destroy {instance_id}")

    def register_image(self, digest: str) -> tuple[str, bool]:
        try:
            response = self._session.post(
                f"{self.url}/v1/images", json={"digest": digest}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise TransientProviderError(f"register image {digest}: {exc}") from exc
        body = self._check(response, f"register image {digest}")
        return str(body["id"]), bool(body["reused"])

    def find_image(self, digest: str) -> str | None:
        try:
            response = self._session.get(
                f"{self.url}/v1/images", params={"digest": digest}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise TransientProviderError(f"find image {digest}: {exc}") from exc
        if response.status_code == 404:
            return None
        return str(self._check(response, f"find image {digest}")["id"])

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        return None

    def probe_health(self, instance: Instance) -> HealthState:
        try:
            response = self._session.get(
                f"{self.url}/v1/instances/{instance.id}/health", timeout=self.timeout
            )
            return HealthState(response.json()["state"])
        except (requests.RequestException, ValueError, KeyError):
            return HealthState.UNKNOWN
