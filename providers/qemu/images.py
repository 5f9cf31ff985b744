"""The qemu target's image cache: ``STATE_ROOT/images/<digest hex>/`` holds what boots (kernel,
initrd and command line, or the disk or ISO) and ``image.json`` (the digest, the file that
boots, where it came from). An image is published into it once per digest, from a build (keyed
by the image digest) or from an artifact the user built (keyed by the sha256 of what boots);
the digest is the image id the engine launches and compares."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provision.digest_cache import publish_once
from provision.providers.qemu.artifact import BootKind, resolve_artifact
from provision.reconcile.provider import ProviderError

IMAGE_INFO = "image.json"
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
Progress = Callable[[str], None]


def image_cache(state_root: Path) -> Path:
    return state_root / "images"


def resolve_cached_image(state_root: Path, image: str) -> Path:
    """The artifact (for ``start_vm``) an image digest names in the cache."""
    match = DIGEST.fullmatch(image)
    directory = image_cache(state_root) / match.group(1) if match else None
    info = _read_image_info(directory) if directory is not None else None
    if directory is None or info is None:
        raise ProviderError(
            f"image {image!r} is not in the qemu image cache ({image_cache(state_root)})",
            hint="give the group's image as an image spec (.yml) or a built artifact; "
            "`provision up` builds and caches it",
        )
    return directory / str(info["artifact"])


def _read_image_info(directory: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((directory / IMAGE_INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "artifact" in info else None


def digest_artifact(path: Path) -> tuple[str, list[Path]]:
    """sha256 over what a built artifact boots (kernel, initrd, root image, command line, or
    the disk or ISO), and those files."""
    source = resolve_artifact(path)
    files = [p for p in (source.path, source.initrd, source.root_image) if p is not None]
    h = hashlib.sha256(b"provision-qemu-artifact-v1\n")
    h.update(f"{source.kind.value} efi={source.efi}\n".encode())
    for file in files:
        with open(file, "rb") as handle:
            h.update(f"{file.name}\n".encode())
            while chunk := handle.read(1 << 20):
                h.update(chunk)
    if source.kind is BootKind.KERNEL:
        h.update(f"\ncmdline {source.cmdline}".encode())
    return "sha256:" + h.hexdigest(), files


def import_artifact(path: Path, cache: Path, *, progress: Progress | None = None) -> str:
    """Copy a built artifact into the cache under its digest (once); return the digest."""
    digest, files = digest_artifact(path)
    source = resolve_artifact(path)
    cmdline = None
    if source.kind is BootKind.KERNEL:
        cmdline = (source.path.name.removesuffix("-kernel") + "-cmdline", source.cmdline)
    if find_cached_image(cache, digest) is None and progress is not None:
        progress(f"caching {path} as {digest[:19]}")
    publish_files(files, cache, digest, source.path.name, str(path.resolve()), cmdline=cmdline)
    return digest


def find_cached_image(cache: Path, digest: str) -> str | None:
    """``digest`` when the cache holds it, else None."""
    match = DIGEST.fullmatch(digest)
    if match is None or _read_image_info(cache / match.group(1)) is None:
        return None
    return digest


def publish_files(
    files: list[Path],
    cache: Path,
    digest: str,
    artifact: str,
    source: str,
    *,
    cmdline: tuple[str, str] | None = None,
) -> bool:
    """Copy ``files`` into the cache under ``digest`` unless it is there; ``artifact`` names the
    file that boots. Returns True when the digest was cached already (nothing copied)."""
    info = {
        "digest": digest,
        "artifact": artifact,
        "source": source,
        "cached_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    texts = {IMAGE_INFO: json.dumps(info, indent=2, sort_keys=True) + "\n"}
    if cmdline is not None:
        texts[cmdline[0]] = cmdline[1] + "\n"
    return publish_once(
        cache, digest, files, texts, published=lambda d: _read_image_info(d) is not None
    )
