"""Image references: ``redis`` means ``docker.io/library/redis:latest``.

The grammar follows the distribution reference format Docker and LinuxKit use:
``[registry[:port]/]path[:tag][@algorithm:hex]``. The first path component is a registry
when it contains a ``.`` or a ``:`` or is ``localhost``; otherwise the registry is
``docker.io`` (``index.docker.io`` is the same) and a one-component path gets the
``library/`` prefix. A reference without tag and without digest gets the tag ``latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provision.errors import ProvisionError

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"  # Docker Hub's old name, normalised to docker.io
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_MAX_NAME = 255


class InvalidReferenceError(ProvisionError):
    """A string is not a valid image reference."""

    exit_code = 2

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(
            f"invalid image reference {text!r}: {reason}",
            hint="write references like redis, alpine:3.19, registry.example:5000/team/app@sha256:<64 hex>",
        )
        self.text = text
        self.reason = reason


@dataclass(frozen=True)
class ImageRef:
    """A parsed, normalised image reference."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse and normalise ``text``; raise InvalidReferenceError naming what is wrong."""
        if not isinstance(text, str) or not text:
            raise InvalidReferenceError(str(text), "empty reference")
        if text != text.strip() or any(c.isspace() for c in text):
            raise InvalidReferenceError(text, "contains white space")
        rest = text
        digest: str | None = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST.fullmatch(digest):
                raise InvalidReferenceError(
                    text, f"bad digest {digest!r} (want sha256:<64 lowercase hex>)"
                )
        tag: str | None = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG.fullmatch(tag):
                raise InvalidReferenceError(text, f"bad tag {tag!r}")
        if not rest:
            raise InvalidReferenceError(text, "no repository name")
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, remainder
            if not _HOST.fullmatch(registry):
                raise InvalidReferenceError(text, f"bad registry host {registry!r}")
        else:
            registry, path = DEFAULT_REGISTRY, rest
        if not path:
            raise InvalidReferenceError(text, "no repository name")
        for component in path.split("/"):
            if not _COMPONENT.fullmatch(component):
                raise InvalidReferenceError(
                    text,
                    f"bad repository component {component!r} "
                    "(lowercase letters, digits and single separators . _ __ -)",
                )
        if registry == LEGACY_DEFAULT_REGISTRY:
            registry = DEFAULT_REGISTRY
        if registry == DEFAULT_REGISTRY and "/" not in path:
            path = "library/" + path
        if len(registry) + 1 + len(path) > _MAX_NAME:
            raise InvalidReferenceError(text, f"name longer than {_MAX_NAME} characters")
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry=registry, repository=path, tag=tag, digest=digest)

    @property
    def locator(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def name(self) -> str:
        """The canonical string, used as ``org.opencontainers.image.ref.name`` in the store."""
        return str(self)

    @property
    def reference(self) -> str:
        """What the registry API calls the reference: the digest if pinned, else the tag."""
        if self.digest:
            return self.digest
        return self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> ImageRef:
        if not _TAG.fullmatch(tag):
            raise InvalidReferenceError(tag, f"bad tag {tag!r}")
        return ImageRef(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> ImageRef:
        if not _DIGEST.fullmatch(digest):
            raise InvalidReferenceError(digest, f"bad digest {digest!r}")
        return ImageRef(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.locator
        if self.tag:
            text += ":" + self.tag
        if self.digest:
            text += "@" + self.digest
        return text


def parse_reference(text: str) -> ImageRef:
    """Function spelling of :meth:`ImageRef.parse`."""
    return ImageRef.parse(text)
