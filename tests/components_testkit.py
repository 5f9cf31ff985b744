"""The component images examples/web.yml uses, for boot tests that run the real image: built
once with `provision pkg build` into a cache kept across runs (``PROVISION_E2E_CACHE``)."""

from __future__ import annotations

import os
from pathlib import Path

from cli_testkit import run_provision

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
        done = run_provision(
            "pkg",
            "build",
            "-q",
            *WEB_COMPONENTS,
            cwd=REPO,
            env={"PROVISION_CACHE": str(COMPONENTS)},
        )
        assert done.returncode == 0, done.stderr
    return COMPONENTS
