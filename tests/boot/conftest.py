"""Boot tests: images assembled from pkg/ recipes and examples/ by tests/boot/rig.py,
booted under QEMU TCG. One boot per image is shared by the tests of a module (all of a
module's tests stay on one xdist worker: xdist_group + --dist loadgroup)."""

from __future__ import annotations

import shutil

import pytest

NEEDED = ("qemu-system-x86_64", "apt-get", "dpkg-deb", "depmod", "cpio", "xorriso")


@pytest.fixture(scope="session", autouse=True)
def _boot_tools() -> None:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"boot tests need {', '.join(missing)} (see scripts/setup.sh)")
