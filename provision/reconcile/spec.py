"""The cluster spec: groups of machines, each with a provider, an image, a size or member names,
provider properties, an update policy and health checks. Parsed strictly; every problem located.

The format is documented in docs/cluster-spec.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from provision.errors import Problem, SpecError
from provision.fsutil import sha256_digest
from provision.spec.checks import type_name
from provision.spec.reader import DocumentReader, KeyPath
from provision.spec.source import parse_yaml_text, read_text_file

NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_COUNT = 1_000_000

# (least, most) for every duration (seconds) and rate (calls per second) a cluster spec holds;
# the command-line flags that override them use the same bounds.
INTERVAL_BOUNDS = (0.1, 3600.0)
RESYNC_BOUNDS = (0.1, 86400.0)
STARTUP_TIMEOUT_BOUNDS = (1.0, 86400.0)
UNHEALTHY_TIMEOUT_BOUNDS = (1.0, 86400.0)
RATE_LIMIT_BOUNDS = (0.01, 10_000.0)


class Strategy(StrEnum):
    ROLLING = "rolling"
    ON_DELETE = "on-delete"


@dataclass(frozen=True)
class Quantity:
    """A count (``2``) or a percentage of the desired size (``"25%"``)."""

    value: int
    percent: bool = False

    def resolve(self, total: int, *, round_up: bool) -> int:
        if not self.percent:
            return self.value
        exact = total * self.value / 100
        return math.ceil(exact) if round_up else math.floor(exact)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


@dataclass(frozen=True)
class UpdatePolicy:
    strategy: Strategy = Strategy.ROLLING
    max_surge: Quantity = Quantity(1)
    max_unavailable: Quantity = Quantity(0)
    paused: bool = False

    def bounds(self, desired: int) -> tuple[int, int]:
        """(surge, unavailable) as counts for ``desired`` machines; never both zero."""
        surge = self.max_surge.resolve(desired, round_up=True)
        unavailable = self.max_unavailable.resolve(desired, round_up=False)
        if surge == 0 and unavailable == 0:
            surge = 1
        return surge, unavailable


@dataclass(frozen=True)
class HealthPolicy:
    """How a machine's health is read and when an unhealthy one is replaced."""

    port: int | None = None
    path: str = "/healthz"
    startup_timeout: float = 600.0
    unhealthy_timeout: float = 300.0
    max_unhealthy: Quantity = Quantity(40, percent=True)
    max_in_flight: int = 1
    enabled: bool = False


@dataclass(frozen=True)
class ProviderSpec:
    """A provider of a cluster spec: its target ``type`` and that target's ``options`` (checked
    against the target's schema). ``base`` is the cluster file's directory: relative paths in
    ``options`` count from there."""

    name: str
    type: str
    rate_limit: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    base: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True)
class GroupSpec:
    name: str
    provider: str
    image: str
    size: int | None = None
    members: tuple[str, ...] | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    update: UpdatePolicy = UpdatePolicy()
    health: HealthPolicy = HealthPolicy()

    @property
    def desired(self) -> int:
        return len(self.members) if self.members is not None else int(self.size or 0)


@dataclass(frozen=True)
class DaemonSettings:
    interval: float = 10.0
    resync: float = 600.0
    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    groups: tuple[GroupSpec, ...]
    providers: Mapping[str, ProviderSpec]
    daemon: DaemonSettings
    journal: Path
    source_file: str
    source_text: str
    journal_url: str = ""  # etcd://HOST:PORT,.../PREFIX when the journal lives in etcd (then ``journal`` is unused)

    @property
    def digest(self) -> str:
        return sha256_digest(self.source_text.encode())

    def group(self, name: str) -> GroupSpec:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)


def config_digest(image: str, properties: Mapping[str, Any]) -> str:
    """The tag value that says which configuration a machine was created with (16 hex)."""
    canon = json.dumps({"image": image, "properties": properties}, sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def parse_duration(value: Any) -> float | None:
    """``30`` / ``30s`` / ``1.5m`` / ``500ms`` / ``2h`` -> seconds; None when unreadable,
    negative or not finite."""
    seconds: float | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            seconds = float(match.group(1)) * _UNITS[match.group(2)]
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def format_seconds(seconds: float) -> str:
    """``0.1`` -> ``100ms``, ``3600`` -> ``1h`` (as a spec would write it)."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def bounded_duration(bounds: tuple[float, float]) -> Callable[[Any], float | None]:
    """A duration parser that also refuses values outside ``bounds`` (None)."""

    def parse(value: Any) -> float | None:
        seconds = parse_duration(value)
        return seconds if seconds is not None and bounds[0] <= seconds <= bounds[1] else None

    return parse


def describe_duration(bounds: tuple[float, float]) -> str:
    return f"a duration from {format_seconds(bounds[0])} to {format_seconds(bounds[1])} (like 30s, 10m)"


def parse_listen(text: str) -> str | None:
    """``127.0.0.1:9464`` / ``[::1]:9464`` (port 0 picks one) as given; None when it is not
    an IP address and a port."""
    match = re.fullmatch(r"([0-9.]+|\[[0-9a-f:]+\]):(\d{1,5})", text)
    return text if match and int(match.group(2)) <= 65535 else None


def parse_quantity(value: Any) -> Quantity | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value <= MAX_COUNT:
        return Quantity(value)
    if isinstance(value, str) and re.fullmatch(r"\d{1,3}%", value.strip()):
        number = int(value.strip()[:-1])
        return Quantity(number, percent=True) if number <= 100 else None
    return None


def default_journal(name: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local/state")
    return Path(base) / "provision" / "clusters" / f"{name}.db"


class _Reader(DocumentReader):
    """The document reader with the cluster spec's names (tag values everywhere)."""

    def name(self, value: Any, path: KeyPath) -> str:
        if not isinstance(value, str) or not NAME.fullmatch(value):
            self.fail(
                path, "must be 1-32 lowercase letters, digits or '-' (a tag value everywhere)"
            )
            return str(value)
        return value


def _int(minimum: int, maximum: int = MAX_COUNT) -> Callable[[Any], int | None]:
    def parse(value: Any) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum
        return value if ok else None

    return parse


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _enum(kind: type[Enum]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            return None

    return parse


def parse_cluster_spec(text: str, file: str = "<cluster>") -> ClusterSpec:
    """Parse and validate a cluster spec; raise SpecError listing every located problem."""
    root, problems = parse_yaml_text(text, file, require_document=True)
    if problems:
        raise SpecError(problems, hint="see docs/cluster-spec.md for the format")
    r = _Reader(root, file)
    if not isinstance(root, dict):
        raise SpecError(
            [Problem(file, 1, 1, "", f"a cluster spec must be a mapping, not {type_name(root)}")],
            hint="see docs/cluster-spec.md for the format",
        )
    top = r.mapping(
        root, (), {"cluster", "providers", "groups", "journal", "daemon"}, {"cluster", "groups"}
    )
    name = r.name(top.get("cluster"), ("cluster",)) if "cluster" in top else "cluster"
    base = (Path(file).parent if file and not file.startswith("<") else Path.cwd()).absolute()
    providers = _parse_providers(r, top.get("providers"), base)
    groups = _parse_groups(r, top.get("groups"), providers, base)
    raw_groups = top.get("groups")
    if not isinstance(raw_groups, list) or len(groups) == len(raw_groups):  # group indexes line up
        check_target_settings(r, top, providers, groups)
    daemon = _parse_daemon(r, top.get("daemon"))
    journal_value = top.get("journal")
    if journal_value is not None and not isinstance(journal_value, str):
        r.fail(("journal",), "must be a path")
        journal_value = None
    journal_url = ""
    if journal_value is not None and journal_value.startswith("etcd://"):
        from provision.reconcile.etcd.location import journal_url_problem

        problem = journal_url_problem(journal_value)
        if problem:
            r.fail(("journal",), problem)
        journal_url, journal_value = journal_value, None
    journal = base / journal_value if journal_value else default_journal(name)
    if r.problems:
        raise SpecError(r.problems, hint="see docs/cluster-spec.md for the format")
    return ClusterSpec(name, groups, providers, daemon, journal, file, text, journal_url)


def load_cluster_spec(path: str | Path) -> ClusterSpec:
    """Read (a regular file, or - for stdin) and parse a cluster spec."""
    file = Path(path)
    text, problems = read_text_file(file)
    if text is None:
        raise SpecError(problems)
    return parse_cluster_spec(text, str(file))


def _parse_providers(r: _Reader, value: Any, base: Path) -> dict[str, ProviderSpec]:
    result: dict[str, ProviderSpec] = {}
    if value is None:
        return result
    if not isinstance(value, dict):
        r.fail(("providers",), "must be a mapping of provider name to settings")
        return result
    for key, body in value.items():
        path: KeyPath = ("providers", str(key))
        name = r.name(str(key), path)
        fields = r.mapping(body, path, {"type", "rateLimit", "options"})
        kind = fields.get("type", name)
        if not isinstance(kind, str):
            r.fail((*path, "type"), "must be a provider type such as simulated, qemu, aws")
            kind = name
        rate = fields.get("rateLimit")
        low, high = RATE_LIMIT_BOUNDS
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not low <= rate <= high
        ):
            r.fail(
                (*path, "rateLimit"),
                f"must be a number of calls per second from {low:g} to {high:g}",
            )
            rate = None
        options = fields.get("options") or {}
        if not isinstance(options, dict):
            r.fail((*path, "options"), "must be a mapping")
            options = {}
        result[name] = ProviderSpec(name, kind, float(rate) if rate else None, options, base)
    return result


def _parse_groups(
    r: _Reader, value: Any, providers: dict[str, ProviderSpec], base: Path
) -> tuple[GroupSpec, ...]:
    if not isinstance(value, list) or not value:
        r.fail(("groups",), "must be a non-empty list of groups")
        return ()
    groups: list[GroupSpec] = []
    seen: set[str] = set()
    allowed = {"name", "provider", "image", "size", "members", "properties", "update", "health"}
    for index, body in enumerate(value):
        path: KeyPath = ("groups", index)
        if not isinstance(body, dict):
            r.fail(path, f"a group must be a mapping, not {type_name(body)}")
            continue
        fields = r.mapping(body, path, allowed, {"name", "provider", "image"})
        name = r.name(fields.get("name"), (*path, "name")) if "name" in fields else f"group{index}"
        if name in seen:
            r.fail((*path, "name"), f"group {name!r} is declared twice")
        seen.add(name)
        provider = fields.get("provider")
        if "provider" in fields and (not isinstance(provider, str) or not provider):
            r.fail((*path, "provider"), "must name a provider")
        provider = str(provider or "")
        if provider and provider not in providers:
            if NAME.fullmatch(provider):
                # A group may name a provider type directly (default options).
                providers[provider] = ProviderSpec(provider, provider, base=base)
            else:  # not a declared provider, and no type has such a name
                r.fail(
                    (*path, "provider"),
                    f"{provider!r} is neither a provider declared under providers: "
                    "nor a provider type",
                )
        image = fields.get("image")
        if "image" in fields and (not isinstance(image, str) or not image.strip()):
            r.fail((*path, "image"), "must be an image id or the path of an image spec")
        size, members = _parse_size(r, fields, path)
        properties = fields.get("properties") or {}
        if not isinstance(properties, dict):
            r.fail((*path, "properties"), "must be a mapping of provider properties")
            properties = {}
        update = _parse_update(r, fields.get("update"), (*path, "update"))
        health = _parse_health(r, fields.get("health"), (*path, "health"))
        groups.append(
            GroupSpec(name, provider, str(image or ""), size, members, properties, update, health)
        )
    return tuple(groups)


def check_target_settings(
    r: _Reader,
    top: Mapping[str, Any],
    providers: Mapping[str, ProviderSpec],
    groups: tuple[GroupSpec, ...],
) -> None:
    """Each provider's type is a registered target, its ``options`` and its groups'
    ``properties`` match that target's schemas; every problem located."""
    from provision.providers import find_target, target_names
    from provision.schema import Schema, check_mapping

    raw = top.get("providers")
    declared: dict[str, Any] = {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}

    def check(schema: Schema, value: Mapping[str, Any], path: KeyPath) -> None:
        for violation in check_mapping(schema, value):
            r.fail((*path, *violation.path), violation.message, at_key=violation.at_key)

    known = ", ".join(target_names())
    for name, pspec in providers.items():
        target = find_target(pspec.type)
        if name in declared:
            path: KeyPath = ("providers", name)
            body = declared.get(name)
            written = body.get("type") if isinstance(body, dict) else None
            if target is None:
                if written is None or isinstance(written, str):  # else: already a problem
                    where = (*path, "type") if written is not None else path
                    r.fail(where, f"unknown provider type {pspec.type!r} (known: {known})")
            else:
                check(target.options, pspec.options, (*path, "options"))
    for index, group in enumerate(groups):
        used = providers.get(group.provider)
        target = find_target(used.type) if used is not None else None
        if used is not None and target is None and group.provider not in declared:
            r.fail(
                ("groups", index, "provider"),
                f"{group.provider!r} is neither a provider declared under providers: nor a provider type (known: {known})",
            )
        if target is not None:
            check(target.properties, group.properties, ("groups", index, "properties"))


def _parse_size(
    r: _Reader, fields: dict[str, Any], path: KeyPath
) -> tuple[int | None, tuple[str, ...] | None]:
    if "size" in fields and "members" in fields:
        r.fail(path, "give either size (cattle) or members (pets), not both")
    if "members" in fields:
        raw = fields["members"]
        if not isinstance(raw, list) or not raw:
            r.fail((*path, "members"), "must be a non-empty list of member names")
            return None, ()
        names = tuple(r.name(m, (*path, "members", i)) for i, m in enumerate(raw))
        if len(set(names)) != len(names):
            r.fail((*path, "members"), "member names must be unique")
        return None, names
    size = r.typed(
        fields.get("size"), (*path, "size"), _int(0), f"a whole number from 0 to {MAX_COUNT}", 0
    )
    if "size" not in fields:
        r.fail(path, "missing 'size' (or 'members')")
    return int(size), None


def _parse_update(r: _Reader, value: Any, path: KeyPath) -> UpdatePolicy:
    fields = r.mapping(value, path, {"strategy", "maxSurge", "maxUnavailable", "paused"})
    qty = "a count or a percentage like '25%'"
    surge = r.typed(fields.get("maxSurge"), (*path, "maxSurge"), parse_quantity, qty, Quantity(1))
    unavailable = r.typed(
        fields.get("maxUnavailable"), (*path, "maxUnavailable"), parse_quantity, qty, Quantity(0)
    )
    if surge.value == 0 and unavailable.value == 0:
        r.fail(path, "maxSurge and maxUnavailable cannot both be 0 (no rollout could progress)")
    return UpdatePolicy(
        strategy=r.typed(
            fields.get("strategy"),
            (*path, "strategy"),
            _enum(Strategy),
            "rolling or on-delete",
            Strategy.ROLLING,
        ),
        max_surge=surge,
        max_unavailable=unavailable,
        paused=r.typed(fields.get("paused"), (*path, "paused"), _bool, "true or false", False),
    )


def _parse_health(r: _Reader, value: Any, path: KeyPath) -> HealthPolicy:
    if value is None:
        return HealthPolicy()
    allowed = {"port", "path", "startupTimeout", "unhealthyTimeout", "maxUnhealthy", "maxInFlight"}
    fields = r.mapping(value, path, allowed)
    health_path = fields.get("path", "/healthz")
    if not isinstance(health_path, str) or not health_path.startswith("/"):
        r.fail((*path, "path"), "must be an absolute URL path like /healthz")
        health_path = "/healthz"
    return HealthPolicy(
        port=r.typed(
            fields.get("port"), (*path, "port"), _int(1, 65535), "a TCP port (1 to 65535)", None
        ),
        path=health_path,
        startup_timeout=r.typed(
            fields.get("startupTimeout"),
            (*path, "startupTimeout"),
            bounded_duration(STARTUP_TIMEOUT_BOUNDS),
            describe_duration(STARTUP_TIMEOUT_BOUNDS),
            600.0,
        ),
        unhealthy_timeout=r.typed(
            fields.get("unhealthyTimeout"),
            (*path, "unhealthyTimeout"),
            bounded_duration(UNHEALTHY_TIMEOUT_BOUNDS),
            describe_duration(UNHEALTHY_TIMEOUT_BOUNDS),
            300.0,
        ),
        max_unhealthy=r.typed(
            fields.get("maxUnhealthy"),
            (*path, "maxUnhealthy"),
            parse_quantity,
            "a count or a percentage",
            Quantity(40, percent=True),
        ),
        max_in_flight=r.typed(
            fields.get("maxInFlight"),
            (*path, "maxInFlight"),
            _int(1),
            f"a whole number from 1 to {MAX_COUNT}",
            1,
        ),
        enabled=True,
    )


def _parse_daemon(r: _Reader, value: Any) -> DaemonSettings:
    path: KeyPath = ("daemon",)
    fields = r.mapping(value, path, {"interval", "resync", "listen"})
    listen = fields.get("listen", "127.0.0.1:9464")
    if not isinstance(listen, str) or parse_listen(listen) is None:
        r.fail((*path, "listen"), "must be HOST:PORT, e.g. 127.0.0.1:9464")
        listen = "127.0.0.1:9464"
    return DaemonSettings(
        interval=r.typed(
            fields.get("interval"),
            (*path, "interval"),
            bounded_duration(INTERVAL_BOUNDS),
            describe_duration(INTERVAL_BOUNDS),
            10.0,
        ),
        resync=r.typed(
            fields.get("resync"),
            (*path, "resync"),
            bounded_duration(RESYNC_BOUNDS),
            describe_duration(RESYNC_BOUNDS),
            600.0,
        ),
        listen=listen,
    )
