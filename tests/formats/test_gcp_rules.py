"""The ``gcp`` format against Compute Engine's rules for an imported image
(https://cloud.google.com/compute/docs/import/import-existing-image): each rule is checked on
the built file itself, the way GCE reads it."""

from __future__ import annotations

import gzip
import json
import subprocess
import tarfile
from pathlib import Path

from formats_testkit import EPOCH, Built

from provision.builders.cloud import GCP_MEMBER, GIB

CHUNK = 16 * 1024 * 1024


def _tar_bytes(artifact: Path) -> bytes:
    return gzip.decompress(artifact.read_bytes())


def _extract(artifact: Path, dest: Path) -> Path:
    subprocess.run(["tar", "-xzf", artifact, "-C", dest], check=True)
    return dest / GCP_MEMBER


def test_the_only_member_is_disk_raw_in_a_gzip_oldgnu_tar(first_build: dict[str, Built]) -> None:
    (artifact,) = first_build["gcp"].files
    assert artifact.name.endswith(".tar.gz")
    head = artifact.read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08"  # gzip, deflate
    raw = _tar_bytes(artifact)
    assert raw[257:265] == b"ustar  \0"  # oldgnu magic (POSIX ustar is "ustar\0" "00")
    with tarfile.open(artifact) as tar:
        assert tar.getnames() == [GCP_MEMBER]


def test_the_member_is_stored_sparse(first_build: dict[str, Built]) -> None:
    (artifact,) = first_build["gcp"].files
    raw = _tar_bytes(artifact)
    assert raw[156:157] == b"S"  # GNU sparse member: the holes are a map, not zeros
    with tarfile.open(artifact) as tar:
        (member,) = tar.getmembers()
        assert member.issparse()
        assert len(raw) < member.size // 8  # the holes take no room in the tar


def test_it_is_reproducible_owner_root_and_dated_by_source_date_epoch(
    first_build: dict[str, Built],
) -> None:
    (artifact,) = first_build["gcp"].files
    data = artifact.read_bytes()
    assert data[4:8] == bytes(4)  # gzip mtime 0
    assert data[3] & 0x08 == 0  # no original file name in the gzip header
    with tarfile.open(artifact) as tar:
        (member,) = tar.getmembers()
    assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
    assert member.mtime == EPOCH and member.mode == 0o644


def test_the_disk_is_a_whole_number_of_gib(first_build: dict[str, Built], tmp_path: Path) -> None:
    (artifact,) = first_build["gcp"].files
    with tarfile.open(artifact) as tar:
        (member,) = tar.getmembers()
    assert member.size % GIB == 0 and member.size >= GIB
    disk = _extract(artifact, tmp_path)
    assert disk.stat().st_size == member.size
    assert disk.stat().st_blocks * 512 < member.size // 8  # unpacked sparse too


def test_the_disk_has_an_mbr_with_a_bootable_partition(
    first_build: dict[str, Built], tmp_path: Path
) -> None:
    (artifact,) = first_build["gcp"].files
    disk = _extract(artifact, tmp_path)
    with disk.open("rb") as f:
        mbr = f.read(512)
    assert mbr[510:512] == b"\x55\xaa"
    assert any(mbr[446 + 16 * n] == 0x80 for n in range(4))  # an active (bootable) entry
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", disk], capture_output=True, check=True, text=True
        ).stdout
    )["partitiontable"]
    assert table["label"] == "dos"
    (boot,) = [p for p in table["partitions"] if p.get("bootable")]
    assert int(boot["start"]) * 512 + int(boot["size"]) * 512 <= disk.stat().st_size


def test_the_disk_is_the_raw_disk_padded_with_zeros(
    first_build: dict[str, Built], tmp_path: Path
) -> None:
    """The same bootable disk as ``aws`` (what boots in QEMU), only longer: zeros to the GiB."""
    (artifact,) = first_build["gcp"].files
    raw = first_build["aws"].files[0]
    disk = _extract(artifact, tmp_path)
    with raw.open("rb") as a, disk.open("rb") as b:
        while chunk := a.read(CHUNK):
            assert b.read(len(chunk)) == chunk
        while rest := b.read(CHUNK):
            assert rest.count(0) == len(rest)
