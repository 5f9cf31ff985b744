"""Registry settings: where a registry's API lives, mirrors, insecure hosts, pull parallelism.

Settings come from a YAML file (``$PROVISION_REGISTRIES``, else
``$XDG_CONFIG_HOME/provision/registries.yml``, else ``~/.config/provision/registries.yml``)::

    mirrors:                      # tried in order before the registry itself (pulls only)
      docker.io: ["https://mirror.internal.example"]
    insecure: ["build-cache.lan:5000"]   # plain http allowed (and TLS not verified)
    endpoints:                    # where a registry name's API really lives
      docker.io: "https://api.internal.example"
    parallel: 4                   # blobs of one image downloaded at once

and from the environment, which adds to the file: ``PROVISION_REGISTRY_MIRRORS``
(``docker.io=https://m1,https://m2;other.io=http://127.0.0.1:5001``) and
``PROVISION_INSECURE_REGISTRIES`` (``host:port,host2``).

Without an ``endpoints`` entry a registry's API is at ``https://NAME``, except Docker Hub:
``docker.io`` serves its API at ``registry-1.docker.io``, as docker, containerd and skopeo
know (:data:`DEFAULT_ENDPOINTS`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import UsageError

# Registry names whose API is not at https://NAME (a product default, as in every OCI client).
DEFAULT_ENDPOINTS: Mapping[str, str] = {"docker.io": "https://registry-1.docker.io"}
DEFAULT_PARALLEL = 4
MAX_PARALLEL = 64
_KEYS = ("mirrors", "insecure", "endpoints", "parallel")


@dataclass(frozen=True)
class RegistryConfig:
    """Where registries live and how provision may talk to them."""

    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    insecure: frozenset[str] = frozenset()
    endpoints: Mapping[str, str] = field(default_factory=dict)
    parallel: int = DEFAULT_PARALLEL

    def is_insecure(self, host: str) -> bool:
        """Plain http is allowed for loopback hosts and hosts the user named as insecure."""
        return host in self.insecure or host.split(":")[0] in self.insecure or is_loopback(host)

    def endpoint(self, registry: str) -> str | None:
        """The API root the user configured for ``registry``, else the built-in default
        (Docker Hub), else None (then it is ``https://REGISTRY``)."""
        return self.endpoints.get(registry) or DEFAULT_ENDPOINTS.get(registry)


def is_loopback(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1 : name.index("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _config_file(env: Mapping[str, str]) -> Path:
    if env.get("PROVISION_REGISTRIES"):
        return Path(env["PROVISION_REGISTRIES"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "provision" / "registries.yml"


def _check_url(url: str, where: str) -> str:
    if not re.match(r"https?://[^/\s]+", url):
        raise UsageError(f"{where}: {url!r} is not an http(s) URL")
    return url.rstrip("/")


def check_parallel(value: object, where: str) -> int:
    """A download parallelism: an integer from 1 to :data:`MAX_PARALLEL`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARALLEL:
        raise UsageError(f"{where}: {value!r} is not a whole number from 1 to {MAX_PARALLEL}")
    return value


def load_registry_config(env: Mapping[str, str] | None = None) -> RegistryConfig:
    """Read the registries file (if any) and the environment."""
    env = os.environ if env is None else env
    mirrors: dict[str, list[str]] = {}
    insecure: set[str] = set()
    endpoints: dict[str, str] = {}
    parallel = DEFAULT_PARALLEL
    path = _config_file(env)
    if path.is_file():
        import yaml  # only when there is a file: most runs have none (a faster start)

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: cannot read: {exc}") from exc
        if not isinstance(data, dict):
            raise UsageError(f"{path}: expected a mapping with {', '.join(_KEYS)}")
        unknown = set(data) - set(_KEYS)
        if unknown:
            raise UsageError(f"{path}: unknown keys: {', '.join(sorted(map(str, unknown)))}")
        for registry, urls in (data.get("mirrors") or {}).items():
            urls = [urls] if isinstance(urls, str) else list(urls or [])
            mirrors.setdefault(str(registry), []).extend(
                _check_url(str(u), f"{path}: mirrors.{registry}") for u in urls
            )
        insecure.update(str(h) for h in data.get("insecure") or [])
        for registry, url in (data.get("endpoints") or {}).items():
            endpoints[str(registry)] = _check_url(str(url), f"{path}: endpoints.{registry}")
        if "parallel" in data:
            parallel = check_parallel(data["parallel"], f"{path}: parallel")
    for part in filter(None, env.get("PROVISION_REGISTRY_MIRRORS", "").split(";")):
        registry, sep, urls = part.partition("=")
        if not sep:
            raise UsageError(f"PROVISION_REGISTRY_MIRRORS: {part!r} is not REGISTRY=URL[,URL...]")
        mirrors.setdefault(registry.strip(), []).extend(
            _check_url(u.strip(), "PROVISION_REGISTRY_MIRRORS") for u in urls.split(",") if u
        )
    insecure.update(
        h.strip() for h in env.get("PROVISION_INSECURE_REGISTRIES", "").split(",") if h.strip()
    )
    return RegistryConfig(
        mirrors={k: tuple(v) for k, v in mirrors.items()},
        insecure=frozenset(insecure),
        endpoints=endpoints,
        parallel=parallel,
    )
