"""The OCI model: media types, digests, platforms, descriptors, resolved images, and the
choice of a platform's manifest from an image index. Pure values, no I/O."""

from __future__ import annotations

import json
import platform as _platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provision.errors import HostileInputError, ImageNotFoundError, ProvisionError

# Media types.
OCI_LAYOUT_VERSION = "1.0.0"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_MEDIA_TYPES = frozenset({MT_OCI_INDEX, MT_DOCKER_LIST})
MANIFEST_MEDIA_TYPES = frozenset({MT_OCI_MANIFEST, MT_DOCKER_MANIFEST})

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20
_DIGEST_RE = re.compile(r"(sha256):([a-f0-9]{64})|(sha512):([a-f0-9]{128})")


def parse_digest(digest: str) -> tuple[str, str]:
    """Split ``algorithm:hex``; refuse anything else (digests become file names)."""
    match = _DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if not match:
        raise HostileInputError(
            f"invalid digest {digest!r}", hint="expected sha256:<64 lowercase hex digits>"
        )
    algorithm = match.group(1) or match.group(3)
    hexpart = match.group(2) or match.group(4)
    return algorithm, hexpart


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no white space, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


@dataclass(frozen=True)
class Platform:
    """An OCI platform: ``linux/amd64``, ``linux/arm64/v8``, ``linux/arm/v7``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def host(cls) -> Platform:
        machine = _platform.machine().lower()
        arch, variant = _ARCH_ALIASES.get(machine, (machine, None))
        return cls("linux", arch, variant)

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) == 1 and parts[0]:
            arch, variant = _ARCH_ALIASES.get(parts[0], (parts[0], None))
            return cls("linux", arch, variant)
        if len(parts) not in (2, 3) or not all(parts):
            raise ProvisionError(
                f"invalid platform {text!r}", hint="write os/arch[/variant], e.g. linux/arm64/v8"
            )
        arch, alias_variant = _ARCH_ALIASES.get(parts[1], (parts[1], None))
        variant = parts[2] if len(parts) == 3 else alias_variant
        return cls(parts[0], arch, variant)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Platform:
        return cls(
            str(value.get("os", "")),
            str(value.get("architecture", "")),
            value.get("variant") or None,
        )

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def normalized(self) -> Platform:
        """arm64 without variant means v8; amd64's v1 is the default."""
        variant = self.variant
        if self.architecture == "arm64" and variant in (None, "v8"):
            variant = None
        if self.architecture == "amd64" and variant in (None, "v1"):
            variant = None
        return Platform(self.os, self.architecture, variant)

    def matches(self, other: Platform) -> bool:
        """Whether an image built for ``other`` runs as this platform (exact after normalising;
        a missing variant on either side matches any)."""
        mine, theirs = self.normalized(), other.normalized()
        if (mine.os, mine.architecture) != (theirs.os, theirs.architecture):
            return False
        return mine.variant is None or theirs.variant is None or mine.variant == theirs.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    platform: Platform | None = None

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Descriptor:
        try:
            digest = str(value["digest"])
            size = int(value["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProvisionError(f"malformed descriptor: {dict(value)!r}") from exc
        parse_digest(digest)
        if size < 0:
            raise ProvisionError(f"malformed descriptor: negative size for {digest}")
        platform = value.get("platform")
        return cls(
            media_type=str(value.get("mediaType", "")),
            digest=digest,
            size=size,
            annotations=dict(value.get("annotations") or {}),
            platform=Platform.from_json(platform) if isinstance(platform, Mapping) else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        return out

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, dict(annotations), self.platform)


@dataclass(frozen=True)
class ResolvedImage:
    """One platform's image, fully present in the store."""

    name: str
    digest: str  # the manifest's digest
    manifest: dict[str, Any] = field(hash=False, compare=False)
    config: dict[str, Any] = field(hash=False, compare=False)
    layers: tuple[Descriptor, ...] = ()
    config_digest: str = ""
    index_digest: str | None = None  # the image index the manifest was chosen from, if any
    media_type: str = MT_OCI_MANIFEST
    size: int = 0

    @property
    def platform(self) -> Platform:
        return Platform(
            str(self.config.get("os", "linux")),
            str(self.config.get("architecture", "")),
            self.config.get("variant") or None,
        )

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, {}, self.platform)

    @property
    def image_config(self) -> dict[str, Any]:
        """The ``config`` section (Entrypoint, Cmd, Env, WorkingDir, Labels, ...)."""
        section = self.config.get("config") or {}
        return dict(section) if isinstance(section, Mapping) else {}

    @property
    def diff_ids(self) -> tuple[str, ...]:
        rootfs = self.config.get("rootfs") or {}
        return tuple(rootfs.get("diff_ids") or ())


@dataclass(frozen=True)
class ImageEntry:
    """One named entry of index.json."""

    name: str
    descriptor: Descriptor


def choose_manifest(index: Mapping[str, Any], platform: Platform) -> Descriptor:
    """Pick the manifest for ``platform`` from an image index (first match wins, as in
    containerd; attestation manifests with platform unknown/unknown never match)."""
    candidates = []
    for raw in index.get("manifests") or ():
        desc = Descriptor.from_json(raw)
        if desc.media_type and desc.media_type not in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
            continue
        if desc.platform is None:
            continue
        if platform.matches(desc.platform):
            candidates.append(desc)
    if not candidates:
        offered = sorted(
            str(Descriptor.from_json(m).platform)
            for m in index.get("manifests") or ()
            if m.get("platform")
        )
        raise ImageNotFoundError(
            f"no image for platform {platform} in the index",
            hint="available: " + (", ".join(offered) or "none"),
        )
    exact = [
        d
        for d in candidates
        if d.platform and d.platform.normalized().variant == platform.normalized().variant
    ]
    return (exact or candidates)[0]
