"""The component images examples/web.yml uses, for boot tests that run the real image: built
once with `provision pkg build` into a cache kept across runs (``PROVISION_E2E_CACHE``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = Path(os.environ.get("PROVISION_E2E_CACHE", "/var/tmp/provision-e2e-oci"))
WEB_COMPONENTS = ("pkg/kernel", "pkg/init", "pkg/sysctl", "pkg/metadata", "pkg/dhcpcd", "pkg/agent")


def ensure_web_components() -> Path:
    """The store holding web.yml's components, building what is missing."""
    from provision.image_digest import ComponentsMissingError, plan_image_digest
    from provision.oci.store import ImageStore

    try:
        plan_image_digest([REPO / "examples/web.yml"], ImageStore(COMPONENTS))
    except ComponentsMissingError:
        env = {**os.environ, "PROVISION_CACHE": str(COMPONENTS)}
        done = subprocess.run(
            [sys.executable, "-m", "provision", "pkg", "build", "-q", *WEB_COMPONENTS],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
            check=False,
            env=env,
        )
        assert done.returncode == 0, done.stderr
    return COMPONENTS
