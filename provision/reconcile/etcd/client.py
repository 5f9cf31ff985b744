"""A small client for etcd's v3 JSON gateway (``/v3/...``, served by every etcd 3.4+ member on
its client port): key ranges, transactions, leases, members, auth.

Why not a library: ``etcd3gw`` talks to one endpoint and has no keepalive thread; ``aetcd``
is asyncio over gRPC; ``etcd3`` no longer imports. The gateway is plain JSON over HTTP, so this
module is requests plus the project's retry policy: several endpoints, each request sent to the
current one and, on a connection error, a timeout or a 5xx, to the next (an etcd member that is
down or cut off from the quorum is skipped in milliseconds). Every request has a timeout.

The gateway's quirks are handled here once: keys and values are base64, 64-bit integers come as
strings, default values (``succeeded: false``, a zero revision) are omitted.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from provision.errors import ProvisionError
from provision.retry import RetryLater, RetryPolicy


class EtcdError(ProvisionError):
    """etcd refused a request or no endpoint answered."""


class EtcdUnavailableError(EtcdError):
    """No endpoint answered (every member down, or the quorum lost)."""


@dataclass(frozen=True)
class EtcdAuth:
    """How to reach the cluster: TLS files and user/password (the password never printed)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    user: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return "\0"
    raw[-1] += 1
    return raw.decode("latin-1") if raw[-1] > 0x7F else raw.decode()


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(
        _unb64(item.get("key")),
        _unb64(item.get("value")),
        int(item.get("create_revision", 0)),
        int(item.get("mod_revision", 0)),
        int(item.get("lease", 0)),
    )


# -- request builders (operations of a transaction) ----------------------------------------


def put_op(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete_op(key: str, prefix: bool = False) -> dict[str, Any]:
    body = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(prefix_end(key))
    return {"request_delete_range": body}


def range_op(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


def created_at(key: str, revision: int) -> dict[str, Any]:
    """Compare: ``key``'s create revision is ``revision`` (0: the key does not exist)."""
    return {
        "key": _b64(key),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": str(revision),
    }


def modified_at(key: str, revision: int) -> dict[str, Any]:
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[dict[str, Any]]

    def ranged(self, index: int) -> list[KeyValue]:
        """The key-values of the ``index``-th response (a range)."""
        body = (
            self.responses[index].get("response_range", {}) if index < len(self.responses) else {}
        )
        return [_kv(item) for item in body.get("kvs", [])]


class EtcdClient:
    """The JSON gateway over several endpoints (``host:port``), with fail-over."""

    def __init__(
        self,
        endpoints: Sequence[str],
        auth: EtcdAuth | None = None,
        *,
        timeout: float = 2.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not endpoints:
            raise EtcdError("no etcd endpoint given")
        self.auth = auth or EtcdAuth()
        scheme = "https" if self.auth.ca_file or self.auth.cert_file else "http"
        self.endpoints = [e if "://" in e else f"{scheme}://{e}" for e in endpoints]
        self.timeout = timeout
        self.retry = retry or RetryPolicy(
            attempts=4, total=max(3 * timeout, 6.0), initial=0.05, maximum=0.5
        )
        self.round_trips = 0  # requests answered (benchmarks and metrics read it)
        self._current = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._token = ""

    def _tls(self) -> dict[str, Any]:
        """TLS settings for each request (a session's own are overridden by REQUESTS_CA_BUNDLE)."""
        tls: dict[str, Any] = {}
        if self.auth.ca_file:
            tls["verify"] = self.auth.ca_file
        if self.auth.cert_file:
            tls["cert"] = (
                (self.auth.cert_file, self.auth.key_file)
                if self.auth.key_file
                else self.auth.cert_file
            )
        return tls

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()

    # -- transport ---------------------------------------------------------------------

    def call(
        self, path: str, body: dict[str, Any], *, timeout: float | None = None, retry: bool = True
    ) -> dict[str, Any]:
        """POST ``body`` to ``/v3/PATH`` on the current endpoint, failing over to the others."""
        tried: list[str] = []

        def attempt() -> dict[str, Any]:
            for _ in range(len(self.endpoints)):
                with self._lock:
                    index = self._current
                endpoint = self.endpoints[index]
                try:
                    return self._post(endpoint, path, body, timeout)
                except (requests.ConnectionError, requests.Timeout, _Unhealthy) as exc:
                    tried.append(f"{endpoint}: {type(exc).__name__}")
                    with self._lock:
                        if self._current == index:
                            self._current = (index + 1) % len(self.endpoints)
            raise RetryLater(
                f"no etcd endpoint answered ({'; '.join(tried[-len(self.endpoints) :])})"
            )

        try:
            if not retry:
                return attempt()
            return self.retry.call(attempt, what=f"etcd {path}")
        except RetryLater as exc:
            raise EtcdUnavailableError(
                str(exc), hint="check that the etcd members are running and reachable"
            ) from None

    def _post(
        self, endpoint: str, path: str, body: dict[str, Any], timeout: float | None
    ) -> dict[str, Any]:
        if self.auth.user and not self._token:
            self._authenticate(endpoint)
        headers = {"Authorization": self._token} if self._token else {}
        response = self._session().post(
            f"{endpoint}/v3/{path}",
            json=body,
            headers=headers,
            timeout=timeout or self.timeout,
            **self._tls(),
        )
        if (
            self.auth.user and response.status_code >= 400 and _auth_expired(response)
        ):  # tokens expire (--auth-token-ttl)
            self._authenticate(endpoint)
            headers = {"Authorization": self._token}
            response = self._session().post(
                f"{endpoint}/v3/{path}",
                json=body,
                headers=headers,
                timeout=timeout or self.timeout,
                **self._tls(),
            )
        if response.status_code >= 500 and _unavailable(response):
            raise _Unhealthy(response.text[:200])
        if response.status_code >= 400:
            raise EtcdError(f"etcd {path}: {response.status_code} {_message(response)}")
        self.round_trips += 1
        result: dict[str, Any] = response.json()
        return result

    def _authenticate(self, endpoint: str) -> None:
        response = self._session().post(
            f"{endpoint}/v3/auth/authenticate",
            json={"name": self.auth.user, "password": self.auth.password},
            timeout=self.timeout,
            **self._tls(),
        )
        if response.status_code != 200:
            raise EtcdError(
                f"etcd authentication as {self.auth.user!r} failed: {_message(response)}",
                hint="check the journal's user and password",
            )
        self._token = str(response.json().get("token", ""))

    # -- key-value -----------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        body = self.call("kv/range", {"key": _b64(key)})
        kvs = body.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str, *, keys_only: bool = False) -> list[KeyValue]:
        """Every key under ``prefix``, in key order (paged by etcd's default limits: none)."""
        request: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        if keys_only:
            request["keys_only"] = True
        body = self.call("kv/range", request)
        return [_kv(item) for item in body.get("kvs", [])]

    def put(self, key: str, value: str, lease: int = 0) -> int:
        return int(
            self.call("kv/put", put_op(key, value, lease)["request_put"])["header"]["revision"]
        )

    def delete_prefix(self, prefix: str) -> None:
        self.call("kv/deleterange", delete_op(prefix, prefix=True)["request_delete_range"])

    def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
    ) -> TxnResult:
        body = self.call(
            "kv/txn", {"compare": compare, "success": success, "failure": failure or []}
        )
        return TxnResult(
            bool(body.get("succeeded", False)),
            int(body["header"]["revision"]),
            list(body.get("responses", [])),
        )

    # -- leases ----------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        body = self.call("lease/grant", {"TTL": str(ttl), "ID": "0"})
        if body.get("error"):
            raise EtcdError(f"etcd lease grant: {body['error']}")
        return int(body["ID"])

    def keepalive(self, lease: int, timeout: float | None = None) -> int:
        """Refresh ``lease``; its remaining TTL (0: the lease is gone). One try per endpoint:
        the caller's renewal loop is the retry."""
        body = self.call("lease/keepalive", {"ID": str(lease)}, timeout=timeout, retry=False)
        return int(body.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        try:
            self.call("kv/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # -- the cluster -----------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        return list(self.call("cluster/member/list", {}).get("members", []))

    def status(self, endpoint: str) -> dict[str, Any]:
        return self._post(
            endpoint if "://" in endpoint else self.endpoints[0].split("://")[0] + "://" + endpoint,
            "maintenance/status",
            {},
            None,
        )


class _Unhealthy(Exception):
    """A member answered but cannot serve (no leader, not part of the quorum)."""


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("error") or body.get("message") or body)[:200]


def _unavailable(response: requests.Response) -> bool:
    text = response.text
    return response.status_code in (502, 503, 504) or any(
        word in text
        for word in (
            "no leader",
            "timed out",
            "unavailable",
            "not capable",
            "leader changed",
            "stopped",
        )
    )


def _auth_expired(response: requests.Response) -> bool:
    return "invalid auth token" in response.text or "user name is empty" in response.text
