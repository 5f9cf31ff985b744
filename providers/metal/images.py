"""Images published for bare metal: ``STATE/images/<digest hex>/`` holds a kernel+initrd build
(its files, manifest and ``image.json``: the digest, the kernel, the initrds and the command
line), served by ``provision serve`` under ``/files/<digest hex>/``."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from provision.errors import UsageError
from provision.fsutil import write_bytes_atomic
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
    images_dir(state).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=images_dir(state)))
    try:
        for file in (*artifact.files, artifact.manifest):
            try:
                os.link(file.resolve(), staging / file.name)
            except OSError:
                shutil.copyfile(file, staging / file.name)
        cmdline = cmdline_file.read_text().strip() if cmdline_file else ""
        info = {
            "digest": artifact.digest,
            "kernel": f"{hexdigest}/{kernel.name}",
            "initrd": [f"{hexdigest}/{f.name}" for f in initrd],
            "cmdline": cmdline,
        }
        write_bytes_atomic(
            staging / IMAGE_INFO, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
        )
        try:
            os.rename(staging, images_dir(state) / hexdigest)
        except OSError:
            if read_boot_image(state, artifact.digest) is None:
                raise
            return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return False
