"""``provision build --platform``: a platform that an input image does not provide is refused,
naming the image (single-platform images resolve for any platform asked, so without the check
``--platform bogus`` built from the host's images)."""

from __future__ import annotations

from pathlib import Path

import pytest
from build_testkit import KERNEL, offline_build_argv

from provision.cli import main
from provision.oci.store import ImageStore, Platform


@pytest.mark.parametrize("platform", ["bogus", "linux/arm64", "windows/amd64"])
def test_a_platform_no_input_image_provides_is_refused_naming_the_image(
    platform: str,
    image_store: ImageStore,
    spec_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    code = main(
        offline_build_argv(
            image_store,
            "--platform",
            platform,
            "-f",
            "tar",
            "-o",
            str(out),
            str(spec_file),
        )
    )
    err = capsys.readouterr().err
    assert code == 2, err
    wanted = Platform.parse(platform)
    assert err.splitlines()[0] == (
        f"provision: error: image {KERNEL} does not provide platform "
        f"{wanted} (it is {Platform.host()})"
    )
    assert not out.exists() or list(out.iterdir()) == []


def test_the_platform_the_images_provide_builds(
    image_store: ImageStore, spec_file: Path, tmp_path: Path
) -> None:
    code = main(
        offline_build_argv(
            image_store,
            "--platform",
            str(Platform.host()),
            "-f",
            "tar",
            "-o",
            str(tmp_path / "out"),
            str(spec_file),
        )
    )
    assert code == 0
    assert (tmp_path / "out" / "machine.tar").is_file()
