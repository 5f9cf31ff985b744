"""Fixtures for build tests: a temporary image store holding small images the tests write
themselves (a kernel image, an init image, service images), and spec files using them."""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.builders.cpio import write_cpio_members
from provision.oci.imagebuild import LayerEntry as E
from provision.oci.imagebuild import tar_layer_from_entries, write_image
from provision.oci.store import ImageStore

REG = "registry.example.test"
KERNEL = f"{REG}/kernel:6.1"
INIT = f"{REG}/init:1"
SERVICE = f"{REG}/web:1"
ONBOOT = f"{REG}/dhcp:1"
KERNEL_BYTES = random.Random(1).randbytes(300_000)


def modules_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            ("lib/modules/6.1.0/kernel/virtio.ko", b"\x7fELF module"),
            ("lib/modules/6.1.0/modules.dep", b"kernel/virtio.ko:\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ucode_cpio() -> bytes:
    out = io.BytesIO()
    write_cpio_members(
        out,
        [
            ("kernel", 0o40755, b""),
            ("kernel/x86", 0o40755, b""),
            ("kernel/x86/microcode", 0o40755, b""),
            ("kernel/x86/microcode/GenuineIntel.bin", 0o100644, b"UCODE"),
        ],
    )
    return out.getvalue()


def offline_build_argv(store: ImageStore, *args: str) -> list[str]:
    """``build -q`` from the tests' own image store, never pulling, then ``args``."""
    return ["build", "-q", "--cache", str(store.root), "--pull", "never", *args]


def write_test_images(store: ImageStore, *, created: int = 1_600_000_000) -> None:
    write_image(
        store,
        KERNEL,
        [
            tar_layer_from_entries(
                [
                    ("kernel", KERNEL_BYTES),
                    ("kernel.tar", modules_tar()),
                    ("ucode.cpio", ucode_cpio()),
                ]
            )
        ],
        {},
        created=created,
    )
    base = tar_layer_from_entries(
        [
            ("bin/", None),
            E.file("bin/busybox", b"BUSYBOX" * 1000, mode=0o755),
            E.hardlink("bin/sh", "bin/busybox"),
            ("etc/", None),
            ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n"),
            ("etc/group", b"root:x:0:\nwww:x:33:\n"),
            ("run/", None),
            ("var/", None),
            E.symlink("var/run", "/run"),
            ("tmp-old/", None),
            ("tmp-old/junk", b"junk"),
            ("opt/", None),
            ("opt/lower", b"lower"),
            E(path="dev/tty0", kind="char", devmajor=4, devminor=0),
        ]
    )
    top = tar_layer_from_entries(
        [
            ("var/run/init.pid", b"1"),
            E.whiteout("tmp-old"),
            ("opt/upper", b"upper"),
            E.opaque("opt"),
            E.file("init", b"#!/bin/sh\nexec /bin/sh\n", mode=0o755),
        ]
    )
    write_image(store, INIT, [base, top], {}, created=created)
    label = {"capabilities": ["CAP_NET_BIND_SERVICE"]}
    write_image(
        store,
        SERVICE,
        [
            tar_layer_from_entries(
                [
                    ("usr/", None),
                    ("usr/bin/", None),
                    E.file("usr/bin/web", b"WEB", mode=0o755),
                    E.symlink("usr/bin/httpd", "web"),
                ]
            )
        ],
        {
            "Entrypoint": ["/usr/bin/web"],
            "Cmd": ["-p", "80"],
            "Labels": {"org.mobyproject.config": json.dumps(label)},
        },
        created=created + 10,
    )
    write_image(
        store,
        ONBOOT,
        [
            tar_layer_from_entries(
                [
                    ("sbin/", None),
                    E.file("sbin/dhcpcd", b"DHCP", mode=0o755),
                ]
            )
        ],
        {"Cmd": ["/sbin/dhcpcd", "--nobackground"]},
        created=created,
    )


SPEC = f"""\
kernel:
  image: {KERNEL}
  cmdline: "console=ttyS0 quiet"
  ucode: ucode.cpio
init:
  - {INIT}
onboot:
  - name: dhcpcd
    image: {ONBOOT}
    readonly: true
services:
  - name: web
    image: {SERVICE}
    readonly: true
  - name: scratch
    image: {ONBOOT}
    uid: web
files:
  - path: etc/motd
    contents: "hello\\n"
    mode: "0644"
  - path: etc/web
    directory: true
    uid: www
  - path: etc/link
    symlink: /etc/motd
  - path: etc/provision/spec.yml
    metadata: yaml
  - path: etc/provision/spec.json
    metadata: json
  - path: var/run/from-files
    contents: through the symlink
volumes:
  - name: data
"""


@pytest.fixture(scope="session")
def image_store(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    store = ImageStore(tmp_path_factory.mktemp("store"))
    write_test_images(store)
    return store


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "specs" / "machine.yml"
    path.parent.mkdir()
    path.write_text(SPEC)
    return path


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    yield
