"""``images.list``, the one Compute Engine call a rerun of ``provision push gcp`` makes, sent
without google-cloud-compute (importing it takes 1.5-2.5 s; this module imports nothing heavy).

It is the only images.list of provision: the digest lookup (:func:`.publish.find_published`),
the family listing of ``--deprecate-previous`` and the target's ``find_image`` all go through
:func:`list_images`. The SDK is used for the calls that change something (images.insert,
images.deprecate), the operation waits, and instances.

The request is the SDK's own (a test compares the two on the wire): ``GET
{endpoint}/compute/v1/projects/{project}/global/images`` with ``filter`` (GCE's list filter
syntax, e.g. ``labels.provision-digest = "..."``) and, after the first page, ``pageToken``;
the SDK's headers (``x-goog-request-params``, ``x-goog-api-version``, JSON content type);
through google-auth's :class:`AuthorizedSession` with the same credentials (a 401 refreshes
the token once and sends again, as the SDK's transport does). An error answer becomes the
SDK's exception (``google.api_core.exceptions.from_http_response``) and then the provider
error class :func:`.clients.map_error` gives it; rate limits, 5xx, dropped connections and
time-outs are retried by :class:`provision.retry.RetryPolicy` (a read: safe to send again),
each page on its own, ``Retry-After`` honoured.
"""

from __future__ import annotations

import platform
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.api_core import version as api_core_version

from provision.providers.gcp.clients import GceClients, map_error
from provision.reconcile.provider import TransientProviderError

# The Compute API version google-cloud-compute's ImagesClient sends (x-goog-api-version);
# tests/gcp check it is still the SDK's.
API_VERSION = "2026-09-01"


@dataclass(frozen=True)
class ListedImage:
    """What provision reads of an image in a listing."""

    name: str
    self_link: str
    family: str = ""
    status: str = ""
    description: str = ""
    creation_timestamp: str = ""
    deprecated: str = ""  # the deprecation state ("DEPRECATED", ...); "" when not deprecated
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, item: dict[str, Any]) -> ListedImage:
        deprecated = item.get("deprecated")
        return cls(
            str(item.get("name", "")),
            str(item.get("selfLink", "")),
            str(item.get("family", "")),
            str(item.get("status", "")),
            str(item.get("description", "")),
            str(item.get("creationTimestamp", "")),
            str(deprecated.get("state", "")) if isinstance(deprecated, dict) else "",
            {str(k): str(v) for k, v in (item.get("labels") or {}).items()},
        )


def _headers(project: str) -> dict[str, str]:
    return {
        "x-goog-api-client": f"gl-python/{platform.python_version()} "
        f"gax/{api_core_version.__version__} rest/{requests.__version__}",
        "x-goog-request-params": urllib.parse.urlencode({"project": project}),
        "x-goog-api-version": API_VERSION,
        "Content-Type": "application/json",
    }


def _page(
    clients: GceClients, project: str, filter_text: str, token: str, timeout: float
) -> dict[str, Any]:
    url = f"{clients.api_root}/compute/v1/projects/{urllib.parse.quote(project, safe='')}/global/images"
    params = {"pageToken": token} if token else {}
    if filter_text:
        params["filter"] = filter_text

    def attempt() -> dict[str, Any]:
        try:
            answer = clients.session.get(
                url, params=params, headers=_headers(project), timeout=timeout
            )
            if answer.status_code >= 400:
                raise gexc.from_http_response(answer)  # type: ignore[no-untyped-call]
            body = answer.json()
        except (gexc.GoogleAPICallError, requests.RequestException, TimeoutError) as exc:
            raise map_error(exc, "images.list") from None
        except ValueError:
            raise TransientProviderError("images.list: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise TransientProviderError("images.list: the answer is not a JSON object")
        return body

    return clients.policy.call(attempt, retry_on=(TransientProviderError,), what="images.list")


def list_images(
    clients: GceClients, project: str, filter_text: str, timeout: float
) -> list[ListedImage]:
    """Every image of ``project`` that ``filter_text`` selects, all pages."""
    found: list[ListedImage] = []
    token = ""
    while True:
        body = _page(clients, project, filter_text, token, timeout)
        found.extend(ListedImage.of(i) for i in body.get("items") or [] if isinstance(i, dict))
        token = str(body.get("nextPageToken") or "")
        if not token:
            return found
