"""The rendered config.json runs under the real runc: a read-only busybox container with its
own cgroup namespace, the merged environment, the uid asked for and a volume bind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provision.assemble.runtime_config import render_runtime_bundle
from provision.spec.image import ImageEntry, VolumeSpec

BUSYBOX = shutil.which("busybox")


@pytest.fixture(autouse=True)
def _runc_and_root() -> None:
    missing = [
        what
        for what, there in (("runc", shutil.which("runc")), ("busybox-static", BUSYBOX))
        if not there
    ]
    if missing:
        pytest.fail(
            f"needs {' and '.join(missing)} (apt-get install {' '.join(missing)}, see scripts/setup.sh)"
        )
    if os.geteuid() != 0:
        pytest.fail("runs a container under runc, which needs root: run the tests as root")


def test_runc_runs_the_rendered_config(tmp_path: Path) -> None:
    assert BUSYBOX is not None
    bundle_dir = tmp_path / "bundle"
    (bundle_dir / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, bundle_dir / "rootfs" / "bin" / "busybox")
    volume_dir = tmp_path / "volumes" / "data"
    volume_dir.mkdir(parents=True)
    (volume_dir / "hello").write_text("from the volume\n")
    script = (
        "echo uid=$(/bin/busybox id -u); echo GREETING=$GREETING; "
        "/bin/busybox cat /proc/self/cgroup; /bin/busybox cat /data/hello; "
        "/bin/busybox touch /x 2>/dev/null || echo read-only-root"
    )
    entry = ImageEntry(
        name=f"spec-test-{os.getpid()}",
        image="busybox:1",
        readonly=True,
        uid=1234,
        env=("GREETING=hi",),
        binds=("data:/data:ro",),
        command=("/bin/busybox", "sh", "-c", script),
    )
    bundle = render_runtime_bundle(
        entry, {"Env": ["PATH=/bin"]}, None, volumes=(VolumeSpec("data"),), role="onboot"
    )
    config = bundle.config
    for mount in config["mounts"]:  # the image's volumes live under the test's directory
        if mount["source"].startswith("/containers/volumes/"):
            mount["source"] = str(tmp_path / "volumes" / mount["source"].rsplit("/", 1)[1])
    (bundle_dir / "config.json").write_text(json.dumps(config, sort_keys=True))
    result = subprocess.run(
        ["runc", "--root", str(tmp_path / "state"), "run", "--bundle", str(bundle_dir), entry.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "uid=1234" in lines and "GREETING=hi" in lines
    assert "from the volume" in lines and "read-only-root" in lines
    cgroups = [line for line in lines if line[:1].isdigit() and ":" in line]
    assert cgroups and all(line.endswith(":/") for line in cgroups), cgroups
