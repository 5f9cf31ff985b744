"""The digest-keyed cache both image caches publish into: a directory appears whole (files
hard-linked, the describing files written) or not at all, once per digest, and a publish that
fails or loses a race leaves no staging directory behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provision.digest_cache import digest_directory, publish_once

DIGEST = "sha256:" + "ab" * 32


def has_info(directory: Path) -> bool:
    return (directory / "info.json").is_file()


def build_outputs(tmp_path: Path) -> list[Path]:
    out = tmp_path / "out"
    out.mkdir()
    files = [out / "web-kernel", out / "web-initrd.img"]
    for n, file in enumerate(files):
        file.write_bytes(bytes([n]) * 100)
    return files


def test_a_publish_places_the_files_and_texts_under_the_digest_once(tmp_path: Path) -> None:
    files = build_outputs(tmp_path)
    cache = tmp_path / "cache"
    assert publish_once(cache, DIGEST, files, {"info.json": "{}\n"}, published=has_info) is False
    directory = digest_directory(cache, DIGEST)
    assert directory == cache / ("ab" * 32)
    assert sorted(p.name for p in directory.iterdir()) == [
        "info.json",
        "web-initrd.img",
        "web-kernel",
    ]
    assert (directory / "info.json").read_text() == "{}\n"
    assert os.stat(directory / "web-kernel").st_ino == os.stat(files[0]).st_ino  # linked
    files[0].unlink()  # a second publish copies nothing: it would fail on the missing file
    assert publish_once(cache, DIGEST, files, {"info.json": "{}\n"}, published=has_info) is True
    assert sorted(p.name for p in cache.iterdir()) == ["ab" * 32]


def test_a_failed_publish_leaves_no_directory_and_no_staging(tmp_path: Path) -> None:
    files = [*build_outputs(tmp_path), tmp_path / "out" / "missing"]
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError):
        publish_once(cache, DIGEST, files, {"info.json": "{}\n"}, published=has_info)
    assert list(cache.iterdir()) == []


def test_a_publish_that_loses_the_race_reports_the_winner_and_leaves_no_staging(
    tmp_path: Path,
) -> None:
    files = build_outputs(tmp_path)
    cache = tmp_path / "cache"
    checks: list[Path] = []

    def published_by_another_meanwhile(directory: Path) -> bool:
        checks.append(directory)
        if len(checks) == 1:  # not there yet; another publisher renames its copy in now
            directory.mkdir(parents=True)
            (directory / "other").write_text("theirs")
            (directory / "info.json").write_text("{}\n")
            return False
        return has_info(directory)

    reused = publish_once(
        cache, DIGEST, files, {"info.json": "{}\n"}, published=published_by_another_meanwhile
    )
    assert reused is True and len(checks) == 2
    directory = digest_directory(cache, DIGEST)
    assert sorted(p.name for p in cache.iterdir()) == [directory.name]
    assert (directory / "other").read_text() == "theirs"  # the winner's directory, untouched


def test_a_directory_without_its_describing_file_is_not_taken_for_published(
    tmp_path: Path,
) -> None:
    files = build_outputs(tmp_path)
    cache = tmp_path / "cache"
    digest_directory(cache, DIGEST).mkdir(parents=True)
    (digest_directory(cache, DIGEST) / "junk").write_text("x")
    with pytest.raises(OSError):
        publish_once(cache, DIGEST, files, {"info.json": "{}\n"}, published=has_info)
    assert sorted(p.name for p in cache.iterdir()) == ["ab" * 32]
