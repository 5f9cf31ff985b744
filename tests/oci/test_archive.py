"""OCI archive export/import: round trips, and hostile archives are refused."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from oci_testkit import make_image

from provision.errors import DigestMismatchError, HostileInputError, UsageError
from provision.oci.archive import export_archive, import_archive
from provision.oci.store import ImageStore


def test_export_import_round_trip(store: ImageStore, tmp_path: Path) -> None:
    one = make_image(store, "one:1", {"x": b"one"})
    two = make_image(store, "reg.example:5000/two:2", {"y": b"two" * 500})
    first = export_archive(store, ["one:1", "reg.example:5000/two:2"], tmp_path / "a.tar")
    second = export_archive(store, ["one:1", "reg.example:5000/two:2"], tmp_path / "b.tar")
    assert first.read_bytes() == second.read_bytes()  # deterministic
    fresh = ImageStore(tmp_path / "fresh")
    names = {i.name for i in import_archive(fresh, first)}
    assert names == {"docker.io/library/one:1", "reg.example:5000/two:2"}
    assert fresh.resolve("one:1").digest == one.digest
    assert fresh.resolve("reg.example:5000/two:2").layers == two.layers
    renamed = ImageStore(tmp_path / "renamed")
    export_archive(store, ["one:1"], tmp_path / "single.tar")
    import_archive(renamed, tmp_path / "single.tar", name="mine/one:copy")
    assert renamed.resolve("mine/one:copy").digest == one.digest
    with pytest.raises(UsageError):
        import_archive(renamed, first, name="ambiguous:1")
    assert not list(tmp_path.glob(".*.tar.*"))  # no temp files left behind


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_info("../evil"), "leaves the archive root"),
        (_info("blobs/../../evil"), "leaves the archive root"),
        (_info("/etc/passwd"), "absolute path"),
        (_info("blobs/sha256/link", tarfile.SYMTYPE, "/etc/shadow"), "is a link"),
        (_info("index.json", tarfile.LNKTYPE, "/etc/passwd"), "is a link"),
        (_info("dev/sda", tarfile.BLKTYPE), "device"),
        (_info("notes.txt"), "unexpected archive entry"),
    ],
)
def test_hostile_archive_entries_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    archive = _archive(tmp_path / "hostile.tar", [(member, b"x")])
    store = ImageStore(tmp_path / "store")
    with pytest.raises(HostileInputError, match=message):
        import_archive(store, archive)
    assert store.list_images() == []
    assert not (tmp_path / "evil").exists()


def test_archive_blob_with_wrong_content_is_refused(tmp_path: Path) -> None:
    claimed = hashlib.sha256(b"genuine").hexdigest()
    archive = _archive(tmp_path / "bad.tar", [(_info(f"blobs/sha256/{claimed}"), b"forged!")])
    store = ImageStore(tmp_path / "store")
    with pytest.raises(DigestMismatchError):
        import_archive(store, archive)
    assert not store.has_blob("sha256:" + claimed)
