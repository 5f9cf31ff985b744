"""Fixtures of tests/gcp: they live in gcp_testkit.py (imported by that name elsewhere too)."""

from gcp.gcp_testkit import *  # noqa: F403
