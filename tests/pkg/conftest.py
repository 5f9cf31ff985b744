"""Fixtures of tests/pkg: they live in pkg_testkit.py, which test modules import by that
unique name (two folders' conftest modules would clash in sys.modules)."""

from pkg_testkit import *  # noqa: F403
