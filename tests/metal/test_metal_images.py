"""The metal image store without a boot: a kernel+initrd build is published under its digest
once (files, manifest and ``image.json`` that ``provision serve`` reads), and a build that is
not kernel+initrd is refused with nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.errors import UsageError
from provision.providers.metal.images import (
    BootImage,
    images_dir,
    publish_boot_image,
    read_boot_image,
)
from provision.target import Artifact

DIGEST = "sha256:" + "cd" * 32


def kernel_build(out: Path) -> Artifact:
    out.mkdir()
    for name, data in [
        ("web-kernel", "k"),
        ("web-initrd.img", "i"),
        ("web-cmdline", "console=ttyS0\n"),
    ]:
        (out / name).write_text(data)
    (out / "web.manifest.json").write_text("{}\n")
    files = tuple(out / n for n in ("web-kernel", "web-initrd.img", "web-cmdline"))
    return Artifact("web", DIGEST, "kernel+initrd", files, out / "web.manifest.json")


def test_a_kernel_build_is_published_once_and_read_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    artifact = kernel_build(tmp_path / "out")
    assert read_boot_image(state, DIGEST) is None
    assert publish_boot_image(state, artifact) is False
    hexdigest = "cd" * 32
    assert read_boot_image(state, DIGEST) == BootImage(
        DIGEST, f"{hexdigest}/web-kernel", (f"{hexdigest}/web-initrd.img",), "console=ttyS0"
    )
    published = images_dir(state) / hexdigest
    assert sorted(p.name for p in published.iterdir()) == [
        "image.json",
        "web-cmdline",
        "web-initrd.img",
        "web-kernel",
        "web.manifest.json",
    ]
    assert publish_boot_image(state, artifact) is True  # the second publish copies nothing
    assert sorted(p.name for p in images_dir(state).iterdir()) == [hexdigest]


def test_a_build_that_is_not_kernel_and_initrd_is_refused_with_nothing_written(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "web.iso").write_text("iso")
    (out / "web.manifest.json").write_text("{}\n")
    artifact = Artifact("web", DIGEST, "iso", (out / "web.iso",), out / "web.manifest.json")
    with pytest.raises(UsageError, match="boots kernel\\+initrd builds"):
        publish_boot_image(tmp_path / "state", artifact)
    assert not (tmp_path / "state").exists()
