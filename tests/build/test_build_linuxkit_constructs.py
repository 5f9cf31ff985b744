"""What the LinuxKit constructs of tests/spec/linuxkit/ assemble into: onboot entries that
share a name get distinct numbered directories in order, a relative mount destination is
absolute in config.json and as written in runtime.json, and ``ucode: ""`` puts no microcode
in front of the initrd."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from build_testkit import INIT, KERNEL, ONBOOT, SERVICE

from provision.build import build_image
from provision.oci.store import ImageStore

SPEC = f"""\
kernel:
  image: {KERNEL}
  cmdline: "console=ttyS0"
  ucode: ""
init:
  - {INIT}
onboot:
  - name: mount
    image: {ONBOOT}
    command: ["/sbin/dhcpcd", "first"]
  - name: between
    image: {ONBOOT}
  - name: mount
    image: {ONBOOT}
    command: ["/sbin/dhcpcd", "second"]
onshutdown:
  - name: say
    image: {ONBOOT}
  - name: say
    image: {ONBOOT}
services:
  - name: web
    image: {SERVICE}
    mounts:
      - {{type: tmpfs, source: tmpfs, destination: var/cache/web}}
    runtime:
      mounts:
        - type: overlay
          source: overlay
          destination: writeable-host-etc
          options: ["rw", "lowerdir=/etc", "upperdir=/run/hostetc/upper", "workdir=/run/hostetc/work"]
"""


def test_linuxkit_constructs_assemble_with_linuxkit_meaning(
    image_store: ImageStore, tmp_path: Path
) -> None:
    spec = tmp_path / "lk.yml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    build_image([spec], store=image_store, outdir=out, formats="kernel+initrd,tar", pull="never")
    with tarfile.open(out / "lk.tar") as tar:
        names = tar.getnames()

        def config(path: str) -> dict[str, object]:
            member = tar.extractfile(path)
            assert member is not None, path
            loaded = json.load(member)
            assert isinstance(loaded, dict)
            return loaded

        onboot = sorted(
            {
                n.split("/")[2]
                for n in names
                if n.startswith("containers/onboot/") and n.count("/") >= 2
            }
        )
        assert onboot == ["000-mount", "001-between", "002-mount"]
        first = config("containers/onboot/000-mount/config.json")["process"]
        second = config("containers/onboot/002-mount/config.json")["process"]
        assert isinstance(first, dict) and isinstance(second, dict)
        assert first["args"] == ["/sbin/dhcpcd", "first"]
        assert second["args"] == ["/sbin/dhcpcd", "second"]
        assert "containers/onshutdown/000-say/config.json" in names
        assert "containers/onshutdown/001-say/config.json" in names
        web = config("containers/services/web/config.json")
        mounts = web["mounts"]
        assert isinstance(mounts, list)
        assert "/var/cache/web" in [m["destination"] for m in mounts]
        runtime = config("containers/services/web/runtime.json")
        assert isinstance(runtime["mounts"], list)
        assert runtime["mounts"][0]["destination"] == "writeable-host-etc"
        assert "boot/ucode.cpio" not in names
    # no microcode cpio: the initrd starts with the compressed cpio itself
    assert (out / "lk-initrd.img").read_bytes()[:3] == b"\x1f\x8b\x08"
