"""Registry credentials (the user's docker config) and ``WWW-Authenticate`` challenges.

Credentials come from ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``):
``auths`` entries with base64 ``auth`` (or ``username``/``password``, or ``identitytoken``),
and ``credHelpers`` / ``credsStore`` run ``docker-credential-NAME get``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import CommandError, ProvisionError, RegistryError
from provision.runner import run


@dataclass(frozen=True)
class Credentials:
    """A user name and a secret (password or token). The secret never appears in repr."""

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


class CredentialStore:
    """Credentials from a docker ``config.json``; helpers are run on demand."""

    def __init__(self, path: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        if path is None:
            base = env.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
            path = Path(base).expanduser() / "config.json"
        self.path = path
        self._data: dict[str, Any] | None = None
        self._cache: dict[str, Credentials | None] = {}

    @classmethod
    def from_mapping(cls, credentials: Mapping[str, Credentials]) -> CredentialStore:
        """Fixed credentials per registry host (for tests and embedding)."""
        store = cls(Path("/nonexistent/config.json"))
        store._data = {}
        store._cache = dict(credentials)
        return store

    def _config(self) -> dict[str, Any]:
        if self._data is None:
            try:
                data = json.loads(self.path.read_text())
            except FileNotFoundError:
                data = {}
            except (OSError, ValueError) as exc:
                raise ProvisionError(f"cannot read docker config {self.path}: {exc}") from exc
            self._data = data if isinstance(data, dict) else {}
        return self._data

    def get(self, registry: str) -> Credentials | None:
        """Credentials for ``registry`` (a host[:port], or docker.io), or None."""
        if registry not in self._cache:
            self._cache[registry] = self._lookup(registry)
        return self._cache[registry]

    def _keys(self, registry: str) -> list[str]:
        keys = [
            registry,
            f"https://{registry}",
            f"http://{registry}",
            f"https://{registry}/v1/",
            f"https://{registry}/v2/",
        ]
        if registry == "docker.io":
            # Docker files Docker Hub's credentials under a legacy key on a docker.io subdomain.
            config = self._config()
            for section in ("credHelpers", "auths"):
                entries = config.get(section) or {}
                keys.extend(k for k in entries if _host_of(k).endswith(".docker.io"))
        return keys

    def _lookup(self, registry: str) -> Credentials | None:
        config = self._config()
        helpers = config.get("credHelpers") or {}
        for key in self._keys(registry):
            if isinstance(helpers, dict) and key in helpers:
                return self._from_helper(str(helpers[key]), key)
        auths = config.get("auths") or {}
        for key in self._keys(registry):
            entry = auths.get(key) if isinstance(auths, dict) else None
            if isinstance(entry, dict):
                found = self._from_entry(entry, key)
                if found:
                    return found
        if config.get("credsStore"):
            return self._from_helper(str(config["credsStore"]), self._keys(registry)[0])
        return None

    def _from_entry(self, entry: Mapping[str, Any], key: str) -> Credentials | None:
        token = entry.get("identitytoken")
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise ProvisionError(
                    f"{self.path}: auths[{key!r}].auth is not base64 of user:password"
                ) from exc
            if not sep:
                raise ProvisionError(f"{self.path}: auths[{key!r}].auth is not user:password")
            return Credentials(user, password, token)
        if entry.get("username"):
            return Credentials(str(entry["username"]), str(entry.get("password", "")), token)
        if token:
            return Credentials("<token>", "", str(token))
        return None

    def _from_helper(self, helper: str, server: str) -> Credentials | None:
        program = f"docker-credential-{helper}"
        if shutil.which(program) is None:
            return None
        try:
            result = run([program, "get"], input=server.encode(), timeout=30)
        except CommandError:
            return None  # the helper has nothing for this server
        try:
            data = json.loads(result.stdout)
        except ValueError as exc:
            raise RegistryError(f"{program} printed something that is not JSON") from exc
        user, secret = str(data.get("Username", "")), str(data.get("Secret", ""))
        if not secret:
            return None
        if user == "<token>":
            return Credentials(user, "", secret)
        return Credentials(user, secret)


def _host_of(key: str) -> str:
    return re.sub(r"^[a-z]+://", "", key).split("/")[0]


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str
    params: Mapping[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge:
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if not match or match.end() == pos:
            break
        value = match.group(2) if match.group(2) is not None else match.group(3) or ""
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = match.end()
    return Challenge(scheme.lower(), params)
