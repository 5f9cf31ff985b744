"""``provision -v`` shows every external command a build ran (the runner logs each at debug
level); without -v none is logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from build_testkit import offline_build_argv

from provision.oci.store import ImageStore

ROOT = Path(__file__).resolve().parents[2]


def build(
    store: ImageStore, spec_file: Path, out: Path, *verbose: str
) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "provision",
        *verbose,
        *offline_build_argv(store, "-f", "iso-bios", "-o", str(out), str(spec_file)),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)


def test_verbose_build_logs_the_commands_it_ran(
    image_store: ImageStore, spec_file: Path, tmp_path: Path
) -> None:
    quiet = build(image_store, spec_file, tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert "provision.runner" not in quiet.stderr
    loud = build(image_store, spec_file, tmp_path / "loud", "-v")
    assert loud.returncode == 0, loud.stderr
    ran = [
        line.split(" run: ", 1)[1]
        for line in loud.stderr.splitlines()
        if " DEBUG provision.runner run: " in line
    ]
    assert any(command.startswith("xorriso -as mkisofs ") for command in ran), loud.stderr
    assert any(
        " DEBUG provision.runner exit code 0 after " in line for line in loud.stderr.splitlines()
    )
