"""``etcd://HOST:PORT,HOST:PORT/PREFIX?ca=FILE&cert=FILE&key=FILE&user=NAME`` -> where the journal is.

The password is never part of the URL (specs are committed, URLs are logged): it comes from
``PROVISION_ETCD_PASSWORD`` or from the file named by ``password-file=``. Relative TLS and
password files resolve against the spec's directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from provision.errors import UsageError
from provision.reconcile.etcd.client import EtcdAuth

SCHEME = "etcd://"
_OPTIONS = {"ca", "cert", "key", "user", "password-file"}


@dataclass(frozen=True)
class EtcdLocation:
    endpoints: tuple[str, ...]
    prefix: str
    auth: EtcdAuth

    def describe(self) -> str:
        """The URL without secrets (what status and logs show)."""
        return f"{SCHEME}{','.join(self.endpoints)}/{self.prefix}"


def is_etcd_url(text: str) -> bool:
    return text.startswith(SCHEME)


def journal_url_problem(text: str) -> str:
    """Why ``text`` is not a valid etcd journal URL ('' when it is); reads no file."""
    try:
        _split(text)
    except UsageError as exc:
        return str(exc)
    return ""


def _split(text: str) -> tuple[tuple[str, ...], str, dict[str, str]]:
    if not is_etcd_url(text):
        raise UsageError(
            f"journal {text!r}: an etcd journal is etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
        )
    parts = urlsplit(text)
    if parts.fragment or "@" in parts.netloc:
        raise UsageError(
            f"journal {text!r}: no user or password in the URL (use user= and PROVISION_ETCD_PASSWORD)"
        )
    endpoints = tuple(e for e in parts.netloc.split(",") if e)
    if not endpoints:
        raise UsageError(f"journal {text!r}: no etcd endpoint (etcd://HOST:PORT,.../PREFIX)")
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"journal {text!r}: endpoint {endpoint!r} is not HOST:PORT")
    prefix = unquote(parts.path.strip("/"))
    if not prefix:
        raise UsageError(
            f"journal {text!r}: a key prefix is required (etcd://HOST:PORT/PREFIX), so clusters of journals do not mix"
        )
    options: dict[str, str] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        if name not in _OPTIONS:
            raise UsageError(
                f"journal {text!r}: unknown option {name!r} (known: {', '.join(sorted(_OPTIONS))})"
            )
        options[name] = values[-1]
    if ("cert" in options) != ("key" in options):
        raise UsageError(f"journal {text!r}: a client certificate needs both cert= and key=")
    return endpoints, prefix, options


def parse_etcd_location(text: str, base: Path | None = None) -> EtcdLocation:
    endpoints, prefix, options = _split(text)
    root = base or Path.cwd()

    def resolve(name: str) -> str:
        value = options.get(name, "")
        if not value:
            return ""
        path = (root / value) if not os.path.isabs(value) else Path(value)
        if not path.is_file():
            raise UsageError(
                f"journal {SCHEME}{','.join(endpoints)}/{prefix}: {name} file {str(path)!r} does not exist"
            )
        return str(path)

    password = os.environ.get("PROVISION_ETCD_PASSWORD", "")
    password_file = resolve("password-file")
    if password_file:
        password = Path(password_file).read_text().strip()
    user = options.get("user", "")
    if password and not user:
        raise UsageError("an etcd password was given but no user= in the journal URL")
    return EtcdLocation(
        endpoints, prefix, EtcdAuth(resolve("ca"), resolve("cert"), resolve("key"), user, password)
    )
