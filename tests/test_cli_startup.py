"""What starting a command imports: only its own command module, and no cloud SDK, YAML or
OCI code unless the command needs it (a CI job runs `provision push` on every commit)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("boto3", "botocore", "azure", "google.cloud", "yaml", "provision.oci")


def _imported(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "provision", *argv],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }


@pytest.mark.parametrize(
    "argv",
    [
        ("version",),
        ("push", "gcp", "--help"),
        ("push", "aws", "--help"),
        ("push", "azure", "--help"),
    ],
)
def test_a_command_starts_without_other_commands_or_heavy_imports(argv: tuple[str, ...]) -> None:
    loaded = _imported(*argv)
    assert "provision.cli" in loaded
    commands = {m for m in loaded if m.startswith("provision.commands.")}
    assert commands <= {f"provision.commands.{argv[0]}"}
    assert sorted(m for m in loaded if m.startswith(HEAVY)) == []
