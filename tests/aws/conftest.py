"""Fixtures of tests/aws: they live in aws_testkit.py, which test modules import by that name."""

from aws_testkit import *  # noqa: F403
