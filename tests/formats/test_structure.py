"""What a user checks of each artifact without booting it: qemu-img's view of qcow2, VHD and
VMDK, the VHD footer, the GCP tarball, the squashfs / erofs trees, the partition tables."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from formats_testkit import CMDLINE, DIGEST, EPOCH, Built, write_format

from provision.builders.base import MIB, BootInput, BootInputs, FormatOptions, derive_uuid
from provision.builders.disk import read_partitions, write_reimage
from provision.builders.formats import (
    FORMATS,
    WRITERS,
    boot_method,
    parse_format,
    render_format_table,
)
from provision.builders.vhd import vhd_checksum
from provision.errors import UsageError


def qemu_img(*args: str | Path) -> str:
    return subprocess.run(
        ["qemu-img", *map(str, args)], capture_output=True, check=True, text=True
    ).stdout


def image_info(path: Path, fmt: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(qemu_img("info", "--output=json", "-f", fmt, path))
    return info


@pytest.mark.parametrize(
    ("fmt", "qemu_format"),
    [
        ("qcow2-bios", "qcow2"),
        ("qcow2-efi", "qcow2"),
        ("vhd", "vpc"),
        ("dynamic-vhd", "vpc"),
        ("vmdk", "vmdk"),
    ],
)
def test_qemu_img_accepts_and_reads_the_same_disk(
    fmt: str, qemu_format: str, first_build: dict[str, Built]
) -> None:
    (image,) = first_build[fmt].files
    if qemu_format != "vpc":  # qemu-img check does not support vpc
        qemu_img("check", "-f", qemu_format, image)
    info = image_info(image, qemu_format)
    assert info["format"] == qemu_format
    assert isinstance(info["virtual-size"], int) and info["virtual-size"] % MIB == 0
    if fmt == "vmdk":
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"  # type: ignore[index]
    # The content is the raw disk of the same firmware, bit for bit.
    raw = first_build[
        "aws" if fmt in ("vhd", "dynamic-vhd", "vmdk") else fmt.replace("qcow2", "raw")
    ].files[0]
    subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", qemu_format, raw, image],
        check=True,
        capture_output=True,
    )


def test_vhd_footer_is_fixed_whole_mib_and_reproducible(first_build: dict[str, Built]) -> None:
    (vhd,) = first_build["vhd"].files
    size = vhd.stat().st_size - 512
    assert size % MIB == 0
    footer = vhd.read_bytes()[-512:]
    assert footer[:8] == b"conectix"
    (disk_type,) = struct.unpack_from(">I", footer, 60)
    assert disk_type == 2  # fixed
    (current,) = struct.unpack_from(">Q", footer, 48)
    assert current == size
    (timestamp,) = struct.unpack_from(">I", footer, 24)
    assert timestamp == EPOCH - 946684800
    assert footer[68:84] == derive_uuid(DIGEST, "vhd-vhd").bytes
    (checksum,) = struct.unpack_from(">I", footer, 64)
    assert checksum == vhd_checksum(footer[:64] + bytes(4) + footer[68:])
    # qemu-img reads the exact size (Azure rejects a size rounded to a CHS geometry).
    assert image_info(vhd, "vpc")["virtual-size"] == size


def test_vhd_matches_qemu_img_force_size_output(
    first_build: dict[str, Built], tmp_path: Path
) -> None:
    """Our pure-Python VHDs are what qemu-img writes, save the timestamp, unique id, checksum."""
    raw = first_build["aws"].files[0]
    for fmt, subformat in (("vhd", "fixed"), ("dynamic-vhd", "dynamic")):
        ours = first_build[fmt].files[0].read_bytes()
        theirs_path = tmp_path / f"{fmt}.vhd"
        qemu_img(
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            f"subformat={subformat},force_size",
            raw,
            theirs_path,
        )
        theirs = theirs_path.read_bytes()
        assert len(ours) == len(theirs)

        def blank(data: bytes, at: int) -> bytes:
            b = bytearray(data)
            b[at + 24 : at + 28] = bytes(4)
            b[at + 64 : at + 84] = bytes(20)
            return bytes(b)

        ours, theirs = (
            blank(blank(ours, len(ours) - 512), 0),
            blank(blank(theirs, len(theirs) - 512), 0),
        )
        assert ours == theirs, fmt


def test_vmdk_descriptor_is_normalised(first_build: dict[str, Built]) -> None:
    (vmdk,) = first_build["vmdk"].files
    text = vmdk.read_bytes()[512 : 512 + 20 * 512].rstrip(b"\0").decode()
    assert 'createType="streamOptimized"' in text
    assert f'SPARSE "{vmdk.name}"' in text
    cid = next(line for line in text.splitlines() if line.startswith("CID="))
    assert cid != "CID=ffffffff"


def test_gcp_tarball_layout(first_build: dict[str, Built]) -> None:
    (artifact,) = first_build["gcp"].files
    assert artifact.name.endswith(".img.tar.gz")
    head = artifact.read_bytes()[:10]
    assert head[:2] == b"\x1f\x8b" and head[4:8] == bytes(4)  # gzip, mtime 0
    with tarfile.open(artifact) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["disk.raw"]
        assert members[0].mtime == EPOCH and members[0].uid == 0
        member = tar.extractfile("disk.raw")
        assert member is not None
        aws = first_build["aws"].files[0].read_bytes()
        assert member.read(len(aws)) == aws  # then zeros to the whole GiB (test_gcp_rules)
    raw = gzip.decompress(artifact.read_bytes())
    assert raw[257:265] == b"ustar  \0"  # GNU tar magic


def test_squashfs_holds_the_root_with_owners_and_devices(first_build: dict[str, Built]) -> None:
    kernel, image, cmdline, _loader = first_build["kernel+squashfs"].files
    assert cmdline.read_text().strip() == CMDLINE
    listing = subprocess.run(
        ["unsquashfs", "-lln", image], capture_output=True, check=True, text=True
    ).stdout
    lines = {
        line.split()[-1] if "->" not in line else line.split()[-3]: line
        for line in listing.splitlines()
        if "squashfs-root" in line
    }
    assert "-rwsr-xr-x 0/0" in lines["squashfs-root/bin/su"]
    assert "1000/1000" in lines["squashfs-root/home/user/notes"]
    assert lines["squashfs-root/dev/console"].startswith("crw-------")
    assert lines["squashfs-root/bin/sh"].startswith("lrwxrwxrwx")
    assert "2023-11-14 22:13" in lines["squashfs-root/etc/provision-marker"]


def test_erofs_holds_the_root(first_build: dict[str, Built], tmp_path: Path) -> None:
    _, image, _, _ = first_build["kernel+erofs"].files
    subprocess.run(["fsck.erofs", image], check=True, capture_output=True)
    dump = subprocess.run(
        ["dump.erofs", "--path=/home/user/notes", image], capture_output=True, check=True, text=True
    ).stdout
    assert "Uid: 1000" in dump or "1000" in dump
    tree = subprocess.run(
        ["dump.erofs", "--ls", "--path=/dev", image], capture_output=True, check=True, text=True
    ).stdout
    assert "console" in tree


def test_partition_tables(first_build: dict[str, Built]) -> None:
    label, parts = read_partitions(first_build["raw-efi"].files[0])
    assert label == "gpt" and parts[0].type == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    label, parts = read_partitions(first_build["raw-bios"].files[0])
    assert label == "dos" and parts[0].start == MIB
    label, parts = read_partitions(first_build["aws"].files[0])
    assert label == "dos" and parts[0].type == "ef"  # hybrid: ESP and syslinux


def test_size_and_data_partition_survives_reimage(boot_inputs: BootInputs, tmp_path: Path) -> None:
    options = FormatOptions(size=96 * MIB, boot_size=32 * MIB, data_size=16 * MIB)
    (disk,) = write_format("raw-efi", boot_inputs, tmp_path / "a", options)
    assert disk.stat().st_size == 96 * MIB
    label, parts = read_partitions(disk)
    assert [p.name for p in parts] == ["EFI System", "provision-data"]
    assert parts[1].size == 96 * MIB - MIB - 32 * MIB - MIB  # data takes the rest, GPT backup fits
    data_offset = parts[1].start
    blkid = subprocess.run(
        ["blkid", "-p", "-O", str(data_offset), "-o", "export", disk],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "LABEL=provision-data" in blkid and "TYPE=ext4" in blkid
    # The machine writes to its data partition (debugfs edits the file system in place).
    note = tmp_path / "note"
    note.write_text("kept across re-imaging\n")
    part = tmp_path / "data.ext4"
    with open(disk, "rb") as f:
        f.seek(data_offset)
        part.write_bytes(f.read(parts[1].size))
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {note} note", part], check=True, capture_output=True
    )
    with open(disk, "r+b") as f:
        f.seek(data_offset)
        f.write(part.read_bytes())
    # A new image (another command line) re-images the disk: boot partition replaced, data kept.
    newer = BootInputs(
        **{**boot_inputs.__dict__, "cmdline": CMDLINE + " second=1", "digest": DIGEST[:-2] + "cd"}
    )
    (image2,) = write_format("raw-efi", newer, tmp_path / "b", FormatOptions(boot_size=32 * MIB))
    write_reimage(image2, disk)
    with open(disk, "rb") as f, open(image2, "rb") as g:
        f.seek(parts[0].start)
        g.seek(parts[0].start)
        assert f.read(parts[0].size) == g.read(parts[0].size)
        f.seek(data_offset)
        part.write_bytes(f.read(parts[1].size))
    out = subprocess.run(
        ["debugfs", "-R", "cat note", part], check=True, capture_output=True, text=True
    ).stdout
    assert out == "kept across re-imaging\n"
    assert read_partitions(disk) == (label, parts)


def test_reimage_refuses_a_bigger_boot_partition(boot_inputs: BootInputs, tmp_path: Path) -> None:
    (small,) = write_format(
        "raw-bios", boot_inputs, tmp_path / "a", FormatOptions(boot_size=24 * MIB)
    )
    (big,) = write_format(
        "raw-bios", boot_inputs, tmp_path / "b", FormatOptions(boot_size=40 * MIB)
    )
    before = small.read_bytes()
    with pytest.raises(UsageError, match="does not fit"):
        write_reimage(big, small)
    assert small.read_bytes() == before


def test_too_small_size_is_refused_before_writing(boot_inputs: BootInputs, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot hold"):
        write_format("raw-bios", boot_inputs, tmp_path / "x", FormatOptions(size=4 * MIB))


def test_registry_names_extensions_and_boot_methods() -> None:
    assert list(FORMATS) == [w.name for w in WRITERS] and len(FORMATS) == len(WRITERS) == 17
    for fmt in ("iso-bios", "raw-efi", "vhd", "vmdk", "gcp", "aws", "kernel+squashfs"):
        assert FORMATS[fmt].name == fmt
        assert parse_format(fmt) is FORMATS[fmt]
    assert FORMATS["gcp"].extension == ".img.tar.gz"
    assert boot_method("iso-efi").kind == "cdrom" and boot_method("iso-efi").firmware == "efi"
    assert boot_method("dynamic-vhd").disk_format == "vpc"
    assert boot_method("vmdk").firmwares == ("bios", "efi") and boot_method(
        "raw-efi"
    ).firmwares == ("efi",)
    assert boot_method("tar-kernel-initrd").unpack == ("kernel", "initrd.img", "cmdline")
    assert boot_method("gcp").unpack == ("disk.raw",)
    with pytest.raises(UsageError, match="unknown output format") as caught:
        parse_format("floppy")
    assert "raw-efi" in str(caught.value.hint)
    with pytest.raises(UsageError, match="not bootable"):
        boot_method("tar")


def test_each_writer_writes_the_files_it_declares(first_build: dict[str, Built]) -> None:
    for fmt, built in first_build.items():
        writer = FORMATS[fmt]
        assert [p.name for p in built.files] == [f"tiny{suffix}" for suffix in writer.files], fmt
        assert writer.extension in writer.files, fmt


def test_only_the_root_formats_need_the_root_tar() -> None:
    """The disks and ISOs are made of the kernel and initrd alone (no root tar is built for
    them); the root images need no initrd."""
    wants_root = {w.name for w in WRITERS if BootInput.ROOTFS_TAR in w.needs}
    assert wants_root == {"tar", "kernel+squashfs", "kernel+erofs"}
    wants_initrd = {w.name for w in WRITERS if BootInput.INITRD in w.needs}
    assert wants_initrd == set(FORMATS) - wants_root


def test_docs_table_is_the_registry() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "formats.md").read_text()
    table = render_format_table()
    assert table in docs, (
        "docs/formats.md: paste the output of `python3 -m provision.builders.formats`"
    )
    # and no other row names a format
    rows = [line for line in docs.splitlines() if line.startswith("| `")]
    assert rows == table.splitlines()[2:]
