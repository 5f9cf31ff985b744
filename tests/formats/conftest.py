"""Fixtures of tests/formats: they live in formats_testkit.py, which test modules import by that
unique name (two folders' conftest modules would clash in sys.modules)."""

from formats_testkit import *  # noqa: F403
