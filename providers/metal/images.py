"""Images published for bare metal: ``STATE/images/<digest hex>/`` holds a kernel+initrd build
(its files, manifest and ``image.json``: the digest, the kernel, the initrds and the command
line), served by ``provision serve`` under ``/files/<digest hex>/``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from provision.digest_cache import publish_once
from provision.errors import UsageError
from provision.target import Artifact

IMAGE_INFO = "image.json"
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class BootImage:
    digest: str
    kernel: str  # paths relative to the images directory (what /files/ serves)
    initrd: tuple[str, ...]
    cmdline: str


def images_dir(state: Path) -> Path:
    return state / "images"


def read_boot_image(state: Path, digest: str) -> BootImage | None:
    match = DIGEST.fullmatch(digest)
    if match is None:
        return None
    try:
        info = json.loads((images_dir(state) / match.group(1) / IMAGE_INFO).read_text())
        return BootImage(
            str(info["digest"]),
            str(info["kernel"]),
            tuple(str(i) for i in info["initrd"]),
            str(info["cmdline"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def publish_boot_image(state: Path, artifact: Artifact) -> bool:
    """Place a kernel+initrd build under its digest (once); True when it was there already."""
    if read_boot_image(state, artifact.digest) is not None:
        return True
    kernel = next((f for f in artifact.files if f.name.endswith("-kernel")), None)
    initrd = [f for f in artifact.files if f.name.endswith("-initrd.img")]
    cmdline_file = next((f for f in artifact.files if f.name.endswith("-cmdline")), None)
    if kernel is None or not initrd:
        raise UsageError(
            f"{artifact.manifest}: the metal target boots kernel+initrd builds (found {artifact.format})"
        )
    hexdigest = artifact.digest.split(":", 1)[1]
    cmdline = cmdline_file.read_text().strip() if cmdline_file else ""
    info = {
        "digest": artifact.digest,
        "kernel": f"{hexdigest}/{kernel.name}",
        "initrd": [f"{hexdigest}/{f.name}" for f in initrd],
        "cmdline": cmdline,
    }
    return publish_once(
        images_dir(state),
        artifact.digest,
        (*artifact.files, artifact.manifest),
        {IMAGE_INFO: json.dumps(info, indent=2, sort_keys=True) + "\n"},
        published=lambda _: read_boot_image(state, artifact.digest) is not None,
    )
