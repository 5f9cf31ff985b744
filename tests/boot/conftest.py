"""Boot tests: the examples built by the real pipeline (`provision pkg build` of every
component they name, then `provision build`, see boot_rig.build_with_provision), booted
under QEMU TCG and driven by boot_machine.Machine. One boot per image is shared by the
tests of a module (a module's tests stay on one xdist worker: xdist_group + --dist
loadgroup), so the boots of different modules run in parallel."""

from __future__ import annotations

import shutil

import pytest

NEEDED = (
    "qemu-system-x86_64",
    "apt-get",
    "dpkg-deb",
    "depmod",
    "cpio",
    "xorriso",
    "ssh",
    "ssh-keygen",
)


@pytest.fixture(scope="session", autouse=True)
def _boot_tools() -> None:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"boot tests need {', '.join(missing)} (see scripts/setup.sh)")
