"""Fixtures of tests/build: they live in build_testkit.py, which test modules import by that
unique name (two folders' conftest modules would clash in sys.modules)."""

from build_testkit import *  # noqa: F403
from build_testkit import _no_source_date_epoch  # noqa: F401 - autouse fixture
