"""Fixtures of tests/oci: they live in oci_testkit.py, which test modules import by that
unique name (two folders' conftest modules would clash in sys.modules)."""

from oci_testkit import *  # noqa: F403
