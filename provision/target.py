"""A target: a place machines run (qemu, the simulated cloud, later AWS, GCP, Azure, bare metal).

Each target is one package ``providers/NAME/`` exposing one object that satisfies
:class:`Target`, registered by one line in ``provision/providers/__init__.py``. Nothing else in
the core names a target: the cluster-spec loader checks ``options`` and ``properties`` against
the target's schemas, the engine gets its instance :class:`Provider` from
:meth:`Target.create_provider`, group images built from an image spec are published through
:meth:`Target.publish`, and ``provision up`` asks :meth:`Target.consoles` for failure hints.

What is the same for every target lives here once: the :class:`Artifact` a build produced (read
from its manifest) and the :class:`PublishedImage` a publish returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from provision.clock import Clock
from provision.errors import UsageError
from provision.reconcile.provider import Instance, Provider
from provision.schema import Schema

if TYPE_CHECKING:  # the cluster spec's loader (and YAML) only when a spec is read
    from provision.reconcile.spec import ProviderSpec

Progress = Callable[[str], None]
P = TypeVar("P")


@dataclass(frozen=True)
class Artifact:
    """One format of a built image: its files and the image digest, from ``NAME.manifest.json``."""

    name: str
    digest: str  # the image digest (sha256:...), the identity every publish is keyed by
    format: str
    files: tuple[Path, ...]
    manifest: Path


@dataclass(frozen=True)
class PublishedImage:
    """What a publish made launchable: the id the provider launches, and from which digest."""

    id: str
    digest: str
    reused: bool  # True: this digest was published before; nothing was uploaded


@runtime_checkable
class Target(Protocol):
    """A place machines run. See the module docstring; providers/NAME/ holds one."""

    @property
    def name(self) -> str:
        """The ``type`` of a provider in a cluster spec (``qemu``)."""
        ...

    @property
    def formats(self) -> tuple[str, ...]:
        """The output formats it boots; the first is what a group's image spec is built as."""
        ...

    @property
    def options(self) -> Schema:
        """The schema of ``providers.NAME.options``."""
        ...

    @property
    def properties(self) -> Schema:
        """The schema of a group's ``properties``."""
        ...

    @property
    def tools(self) -> tuple[str, ...]:
        """Programs its machines need on this host, checked before any build or boot."""
        ...

    def create_provider(self, spec: ProviderSpec, clock: Clock) -> Provider:
        """The instance Provider for ``spec`` (options already checked against the schema)."""
        ...

    # The methods below take a provider that this target's create_provider() made: it carries
    # the options and the clients (one object per configured provider).

    def find_image(self, provider: Provider, digest: str) -> str | None:
        """The id of the image published from ``digest``, or None when it is not published.
        Never uploads or builds anything (``provision plan`` calls it)."""
        ...

    def publish(
        self, provider: Provider, artifact: Artifact, progress: Progress | None = None
    ) -> PublishedImage:
        """Make ``artifact`` launchable; idempotent by ``artifact.digest``."""
        ...

    def resolve_image(
        self,
        provider: Provider,
        image: str,
        progress: Progress | None = None,
        *,
        publish: bool = True,
    ) -> str:
        """A group's ``image`` as written when it is not an image spec (an id, a built artifact's
        path): the id to launch. With ``publish=False`` (``provision plan``) nothing is copied or
        uploaded: the id it would have. Raise a ProvisionError when the target cannot launch it."""
        ...

    def consoles(self, provider: Provider, instances: Sequence[Instance]) -> list[str]:
        """Where to read what ``instances`` printed (log files, URLs), for failure hints."""
        ...

    def declared_ports(self, properties: Mapping[str, Any]) -> tuple[int, ...]:
        """The TCP guest ports a group's properties publish besides the agent's."""
        ...


def own_provider(provider: Provider, kind: type[P], target: str) -> P:
    """``provider`` as the class ``target``'s create_provider() makes (unwrapping the engine's
    pacing and counting wrappers), or a TypeError: a target is only handed its own providers."""
    inner: Any = provider
    while not isinstance(inner, kind) and hasattr(inner, "inner"):
        inner = inner.inner
    if not isinstance(inner, kind):
        raise TypeError(f"the {target} target was handed a {type(provider).__name__}")
    return inner


def read_artifact(manifest: Path, fmt: str) -> Artifact:
    """The ``fmt`` output of the build whose manifest is ``manifest``."""
    try:
        body = json.loads(manifest.read_text())
        outputs = [o for o in body["outputs"] if o["format"] == fmt]
        digest = str(body["image_digest"])
        name = str(body["name"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{manifest}: not a build manifest ({exc})") from exc
    if not outputs:
        raise UsageError(
            f"{manifest}: the build has no {fmt} output",
            hint=f"build it with: provision build -f {fmt}",
        )
    files = tuple(manifest.parent / str(o["file"]) for o in outputs)
    return Artifact(name, digest, fmt, files, manifest)
