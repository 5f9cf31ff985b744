"""``provision build`` disk and assembly options through the CLI: ``--data-size`` adds the
ext4 ``provision-data`` partition after the boot partition, ``--boot-size`` fixes the boot
partition, both land in the manifest, and ``--no-dedupe`` keeps identical container files as
copies (a bigger initrd)."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
from build_testkit import INIT, KERNEL, offline_build_argv, write_test_images

from provision.builders.base import MIB
from provision.builders.disk import DATA_LABEL, read_partitions
from provision.cli import main
from provision.oci.imagebuild import LayerEntry as E
from provision.oci.imagebuild import tar_layer_from_entries, write_image
from provision.oci.store import ImageStore

REG = "registry.example.test"
TWIN_A, TWIN_B = f"{REG}/twin-a:1", f"{REG}/twin-b:1"
BLOB = random.Random(11).randbytes(200_000)  # incompressible: a second copy shows in size
SPEC = f"""\
kernel:
  image: {KERNEL}
  cmdline: "console=ttyS0"
init:
  - {INIT}
onboot:
  - name: a
    image: {TWIN_A}
services:
  - name: b
    image: {TWIN_B}
"""


def ext_label(disk: Path, start: int) -> str:
    """The volume name of the ext2/3/4 file system at byte ``start`` of ``disk``."""
    with open(disk, "rb") as f:
        f.seek(start + 1024)
        block = f.read(1024)
    (magic,) = struct.unpack_from("<H", block, 0x38)
    assert magic == 0xEF53, "no ext file system at the data partition"
    return block[0x78:0x88].rstrip(b"\0").decode()


@pytest.fixture(scope="module")
def twin_store(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    store = ImageStore(tmp_path_factory.mktemp("twin-store"))
    write_test_images(store)
    for ref in (TWIN_A, TWIN_B):
        write_image(
            store,
            ref,
            [
                tar_layer_from_entries(
                    [
                        ("bin/", None),
                        E.file("bin/tool", BLOB, mode=0o755),
                    ]
                )
            ],
            {"Cmd": ["/bin/tool"]},
            created=1_600_000_000,
        )
    return store


def build(store: ImageStore, tmp_path: Path, out: str, *extra: str) -> Path:
    spec = tmp_path / "twins.yml"
    spec.write_text(SPEC)
    code = main(
        offline_build_argv(
            store,
            "-o",
            str(tmp_path / out),
            *extra,
            str(spec),
        )
    )
    assert code == 0
    return tmp_path / out


@pytest.mark.parametrize("fmt", ["raw-bios", "raw-efi"])
def test_data_size_adds_the_provision_data_partition(
    twin_store: ImageStore, tmp_path: Path, fmt: str
) -> None:
    out = build(twin_store, tmp_path, "out", "-f", fmt, "--data-size", "16M", "--boot-size", "64M")
    disk = next(
        p for p in out.iterdir() if not p.name.endswith(".json") and not p.name.startswith(".")
    )
    label, parts = read_partitions(disk)
    assert label == ("gpt" if fmt == "raw-efi" else "dos")
    assert len(parts) == 2
    boot, data = parts
    assert boot.size == 64 * MIB
    assert data.start == boot.start + boot.size and data.size == 16 * MIB
    assert ext_label(disk, data.start) == DATA_LABEL
    if label == "gpt":
        assert data.name == DATA_LABEL
    options = json.loads((out / "twins.manifest.json").read_text())["options"]
    assert options["data_size"] == 16 * MIB and options["boot_size"] == 64 * MIB
    assert options["dedupe"] is True


def test_without_data_size_the_disk_has_one_partition(
    twin_store: ImageStore, tmp_path: Path
) -> None:
    out = build(twin_store, tmp_path, "out", "-f", "raw-bios", "--boot-size", "32M")
    disk = next(
        p for p in out.iterdir() if not p.name.endswith(".json") and not p.name.startswith(".")
    )
    assert len(read_partitions(disk)[1]) == 1


def test_no_dedupe_gives_a_bigger_initrd(twin_store: ImageStore, tmp_path: Path) -> None:
    linked = build(twin_store, tmp_path, "linked", "-f", "kernel+initrd")
    copied = build(twin_store, tmp_path, "copied", "-f", "kernel+initrd", "--no-dedupe")
    small = (linked / "twins-initrd.img").stat().st_size
    big = (copied / "twins-initrd.img").stat().st_size
    assert big - small > len(BLOB) * 9 // 10  # one more (incompressible) copy
    options = json.loads((copied / "twins.manifest.json").read_text())["options"]
    assert options["dedupe"] is False


def test_help_lists_every_registered_format_and_how_it_boots(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from provision.builders.formats import WRITERS, describe_boot

    with pytest.raises(SystemExit) as done:
        main(["build", "--help"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for writer in WRITERS:
        line = next(line for line in lines if line.split()[:1] == [writer.name])
        assert f"NAME{writer.extension}" in line and line.endswith(describe_boot(writer.boot)), line
    assert "tar-kernel-initrd  NAME-initrd.tar" in "\n".join(lines)
