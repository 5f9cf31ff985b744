"""Images published for bare metal: ``STATE/images/<digest hex>/`` holds a kernel+initrd build
(its files, manifest and ``image.json``: the digest, the kernel, the initrds and the command
line), served by ``provision serve`` under ``/files/<digest hex>/``. When machines of the lab
have a local disk, the same image is also written there as a raw disk of provision's layout
(``disk-<firmware>-<boot>m-<data>m.img``: boot partition, ext4 provision-data partition), made
from that kernel and initrd, which a network-booted machine installs onto its disk."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


@dataclass(frozen=True)
class LocalDiskLayout:
    """The raw disk machines install: its firmware (bios: MBR + syslinux, efi: GPT +
    systemd-boot) and partition sizes in MiB. The boot partition has a fixed size so every
    later image fits it (re-imaging keeps the partition table)."""

    firmware: Literal["bios", "efi"] = "bios"
    boot_mib: int = 256
    data_mib: int = 1024

    def file_name(self) -> str:
        return f"disk-{self.firmware}-{self.boot_mib}m-{self.data_mib}m.img"


def disk_image_path(state: Path, digest: str, layout: LocalDiskLayout) -> str | None:
    """The served path (``<hex>/disk-...img``) of the published disk of ``digest``, or None."""
    match = DIGEST.fullmatch(digest)
    if match is None:
        return None
    relative = f"{match.group(1)}/{layout.file_name()}"
    return relative if (images_dir(state) / relative).is_file() else None


def publish_disk_image(state: Path, artifact: Artifact, layout: LocalDiskLayout) -> bool:
    """Write the disk of ``layout`` beside the published kernel+initrd of ``artifact`` (once,
    renamed into place); True when it was there already."""
    from provision.builders.base import MIB, BootInputs, FormatOptions
    from provision.builders.disk import write_raw_disk

    if disk_image_path(state, artifact.digest, layout) is not None:
        return True
    image = read_boot_image(state, artifact.digest)
    if image is None:
        raise UsageError(f"{artifact.digest}: publish its kernel+initrd before its disk")
    try:
        epoch = int(json.loads(artifact.manifest.read_text()).get("source_date_epoch", 0))
    except (OSError, ValueError, AttributeError) as exc:
        raise UsageError(f"{artifact.manifest}: unreadable ({exc})") from exc
    if len(image.initrd) != 1:
        raise UsageError(f"{artifact.manifest}: a disk holds one initrd, the image has several")
    inputs = BootInputs(
        kernel=images_dir(state) / image.kernel,
        initrd=images_dir(state) / image.initrd[0],
        cmdline=image.cmdline,
        rootfs_tar=None,
        digest=artifact.digest,
        source_date_epoch=epoch,
        name=artifact.name,
    )
    final = images_dir(state) / artifact.digest.split(":", 1)[1] / layout.file_name()
    staging = final.with_name(f".{final.name}.{os.getpid()}")
    try:
        options = FormatOptions(boot_size=layout.boot_mib * MIB, data_size=layout.data_mib * MIB)
        write_raw_disk(inputs, staging, options, layout.firmware)
        os.rename(staging, final)
    finally:
        staging.unlink(missing_ok=True)
    return False
