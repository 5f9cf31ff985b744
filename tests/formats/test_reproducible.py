"""Two builds of the same inputs, in different directories and at different times, give the same
bytes for every format; a different digest gives different disk identifiers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from formats_testkit import Built, write_format

from provision.builders.base import BootInputs
from provision.builders.disk import read_partitions
from provision.builders.formats import FORMATS
from provision.errors import ToolMissingError
from provision.runner import require_tools

MY_FORMATS = [
    "iso-bios",
    "iso-efi",
    "iso-efi-initrd",
    "raw-bios",
    "raw-efi",
    "qcow2-bios",
    "qcow2-efi",
    "vhd",
    "dynamic-vhd",
    "vmdk",
    "gcp",
    "aws",
    "kernel+squashfs",
    "kernel+erofs",
]


def test_every_format_is_byte_for_byte_reproducible(
    first_build: dict[str, Built], boot_inputs: BootInputs, tmp_path: Path
) -> None:
    time.sleep(1.1)  # a second later: anything stamped with the clock would differ
    # Inputs with other mtimes too: nothing may leak the source files' dates.
    os.utime(boot_inputs.kernel, (1, 1))
    for fmt in MY_FORMATS:
        again = write_format(fmt, boot_inputs, tmp_path / "elsewhere" / fmt)
        first = first_build[fmt].files
        assert [p.name for p in again] == [p.name for p in first], fmt
        for a, b in zip(first, again, strict=True):
            assert a.read_bytes() == b.read_bytes(), f"{fmt}: {a.name} differs between builds"


def test_identifiers_follow_the_digest(boot_inputs: BootInputs, tmp_path: Path) -> None:
    other = BootInputs(**{**boot_inputs.__dict__, "digest": "sha256:" + "cd" * 32})
    (a,) = write_format("raw-efi", boot_inputs, tmp_path / "a")
    (b,) = write_format("raw-efi", other, tmp_path / "b")
    assert a.read_bytes()[:440] == b.read_bytes()[:440]  # same boot code
    assert read_partitions(a) == read_partitions(b)  # same geometry
    assert a.read_bytes()[512:1024] != b.read_bytes()[512:1024]  # other GPT disk GUID


def test_writers_name_their_tools_and_missing_ones_are_reported() -> None:
    for fmt in MY_FORMATS:
        tools = list(FORMATS[fmt].tools())
        require_tools(tools)  # all installed here
    with pytest.raises(ToolMissingError) as caught:
        require_tools(["xorriso", "no-such-mkfs"])
    assert "no-such-mkfs" in str(caught.value)
