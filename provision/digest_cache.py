"""A cache of directories keyed by digest: ``CACHE/<digest hex>/`` is published once, whole.

The files are staged in a new directory inside the cache (hard links to the immutable build
outputs where the file system allows, else copies), the small files the caller describes them
with are written beside them, and the staging directory is renamed to the digest's name in one
``rename(2)``: a reader sees the directory complete or not at all. A second publish of the same
digest, or one that loses a race to another, copies nothing and leaves no staging behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from provision.fsutil import write_text_atomic


def digest_directory(cache: Path, digest: str) -> Path:
    """``CACHE/<hex>`` for the digest ``ALGORITHM:<hex>``."""
    return cache / digest.split(":", 1)[1]


def publish_once(
    cache: Path,
    digest: str,
    files: Iterable[Path],
    texts: Mapping[str, str],
    *,
    published: Callable[[Path], bool],
) -> bool:
    """Make ``files`` and ``texts`` (file name -> content) the cache's directory for ``digest``
    unless ``published(directory)`` says it is there; True when it was (nothing copied), also
    when another publish of the digest renamed its directory into place first."""
    directory = digest_directory(cache, digest)
    if published(directory):
        return True
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=cache))
    try:
        for file in files:
            try:  # the cache's copy of an immutable build output: a hard link when it can be
                os.link(file.resolve(), staging / file.name)
            except OSError:
                shutil.copyfile(file, staging / file.name)
        for name, text in texts.items():
            write_text_atomic(staging / name, text)
        try:
            os.rename(staging, directory)
        except OSError:
            if not published(directory):
                raise
            return True  # published meanwhile by someone else
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return False
