"""The smallest boot partition (8 MiB, what a tiny image gets) is still a valid FAT16 that
mtools reads back, with the hidden sectors of a partition at 1 MiB."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provision.builders.fat import write_fat_image

MIB = 1024 * 1024


@pytest.mark.parametrize("size_mib", [8, 12, 16, 32])
def test_small_fat16_is_created_and_readable(tmp_path: Path, size_mib: int) -> None:
    dest = tmp_path / "boot.fat"
    write_fat_image(
        dest,
        size_mib * MIB,
        {"/EFI/BOOT/hello.txt": b"hello\n"},
        label="BOOT",
        volume_id="1234abcd",
        epoch=315532800,
        hidden_sectors=2048,
    )
    assert dest.stat().st_size == size_mib * MIB
    listing = subprocess.run(
        ["mdir", "-i", str(dest), "::/EFI/BOOT"], capture_output=True, text=True, check=True
    ).stdout
    assert "hello" in listing
    info = subprocess.run(
        ["minfo", "-i", str(dest), "::"], capture_output=True, text=True, check=True
    ).stdout
    assert 'disk type="FAT16' in info
