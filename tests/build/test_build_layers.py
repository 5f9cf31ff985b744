"""Layer application as containerd does it, and the hostile-layer corpus."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from provision.assemble.layers import LayerOrigin, apply_layer
from provision.assemble.tree import NodeKind, Spool, Tree
from provision.errors import HostileInputError
from provision.oci.imagebuild import LayerEntry as E
from provision.oci.imagebuild import tar_layer_from_entries

ORIGIN = LayerOrigin("example.org/app:1", "sha256:0123456789ab")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def apply(
    tree: Tree, spool: Spool, *entries: E | tuple[str, bytes | str | None], devices: bool = False
) -> None:
    apply_layer(
        tree, io.BytesIO(tar_layer_from_entries(entries)), spool, ORIGIN, allow_devices=devices
    )


def content(tree: Tree, spool: Spool, path: str) -> bytes:
    node = tree.lookup(path, follow=False)
    assert node is not None and node.kind is NodeKind.FILE, path
    return spool.read_range(node.offset, node.size)


def paths(tree: Tree) -> list[str]:
    return [path for path, _ in tree.walk()]


def test_whiteout_deletes_lower_entry(spool: Spool) -> None:
    tree = Tree()
    apply(
        tree,
        spool,
        ("etc/", None),
        ("etc/a", b"a"),
        ("etc/b", b"b"),
        ("old/", None),
        ("old/x", b"x"),
    )
    apply(tree, spool, E.whiteout("etc/a"), E.whiteout("old"))
    assert paths(tree) == ["etc", "etc/b"]


def test_opaque_directory_keeps_entries_of_its_own_layer(spool: Spool) -> None:
    tree = Tree()
    apply(tree, spool, ("d/", None), ("d/lower", b"1"), ("d/sub/", None), ("d/sub/f", b"2"))
    # the new entry comes BEFORE the marker in the tar: it must survive
    apply(tree, spool, ("d/new", b"3"), E.opaque("d"), ("d/after", b"4"))
    assert paths(tree) == ["d", "d/after", "d/new"]


def test_hard_links_share_one_node(spool: Spool) -> None:
    tree = Tree()
    apply(
        tree,
        spool,
        ("bin/", None),
        ("bin/busybox", b"BB"),
        E.hardlink("bin/sh", "bin/busybox"),
        E.hardlink("/bin/ls", "/bin/busybox"),
    )
    assert tree.lookup("bin/sh") is tree.lookup("bin/busybox") is tree.lookup("bin/ls")
    assert content(tree, spool, "bin/ls") == b"BB"


def test_absolute_symlink_resolves_inside_the_root(spool: Spool) -> None:
    tree = Tree()
    apply(tree, spool, ("run/", None), ("var/", None), E.symlink("var/run", "/run"))
    apply(tree, spool, ("var/run/x.pid", b"42"), ("var/run/sub/y", b"y"))
    assert content(tree, spool, "run/x.pid") == b"42"
    assert content(tree, spool, "run/sub/y") == b"y"
    link = tree.lookup("var/run", follow=False)
    assert link is not None and link.kind is NodeKind.SYMLINK and link.target == "/run"


def test_relative_symlinks_and_dotdot_inside_the_root(spool: Spool) -> None:
    tree = Tree()
    apply(
        tree,
        spool,
        ("usr/lib/", None),
        E.symlink("lib", "usr/lib"),
        E.symlink("usr/lib/up", "../.."),
        ("./lib/up/etc/f", b"f"),
    )
    assert content(tree, spool, "etc/f") == b"f"


def test_directory_and_file_replace_each_other(spool: Spool) -> None:
    tree = Tree()
    apply(tree, spool, ("a/", None), ("a/x", b"x"), ("b", b"file"))
    apply(tree, spool, ("a", b"now a file"), ("b/", None), ("b/y", b"y"))
    assert content(tree, spool, "a") == b"now a file"
    assert paths(tree) == ["a", "b", "b/y"]


def test_directory_entry_updates_metadata_and_keeps_children(spool: Spool) -> None:
    tree = Tree()
    apply(tree, spool, ("d/", None), ("d/x", b"x"))
    apply(tree, spool, E.dir("d", mode=0o700, uid=5))
    node = tree.lookup("d")
    assert node is not None and node.mode == 0o700 and node.uid == 5
    assert paths(tree) == ["d", "d/x"]


def test_devices_accepted_only_when_allowed(spool: Spool) -> None:
    tree = Tree()
    apply(tree, spool, E(path="dev/console", kind="char", devmajor=5, devminor=1), devices=True)
    node = tree.lookup("dev/console")
    assert node is not None and node.kind is NodeKind.CHAR and node.rdev == (5, 1)


def _huge_file_tar() -> bytes:
    info = tarfile.TarInfo("big")
    info.size = 1 << 40
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict") + b"\0" * 4096


def _raw(*entries: E | tuple[str, bytes | str | None]) -> bytes:
    return tar_layer_from_entries(entries)


HOSTILE: dict[str, tuple[bytes, str]] = {
    "dotdot": (_raw(("../evil", b"x")), "climbs above"),
    "dotdot-inside": (_raw(("a/../../evil", b"x")), "climbs above"),
    "absolute-escape": (_raw(("/../../etc/evil", b"x")), "climbs above"),
    "symlink-escape": (_raw(E.symlink("up", ".."), ("up/evil", b"x")), "escapes"),
    "symlink-chain-escape": (
        _raw(
            ("a/", None),
            E.symlink("l1", "a/l2"),
            E.symlink("a/l2", "../../.."),
            ("l1/etc/evil", b"x"),
        ),
        "escapes",
    ),
    "absolute-symlink-escape": (_raw(E.symlink("s", "/x/../.."), ("s/evil", b"x")), "escapes"),
    "symlink-loop": (_raw(E.symlink("a", "b"), E.symlink("b", "a"), ("a/x", b"x")), "levels"),
    "hardlink-outside": (_raw(E.hardlink("h", "../../etc/shadow")), "outside"),
    "hardlink-through-symlink": (
        _raw(E.symlink("s", "../.."), E.hardlink("h", "s/etc/shadow")),
        "outside",
    ),
    "hardlink-missing": (_raw(E.hardlink("h", "etc/shadow")), "does not exist"),
    "hardlink-directory": (_raw(("d/", None), E.hardlink("h", "d")), "directory"),
    "char-device": (_raw(E(path="dev/mem", kind="char", devmajor=1, devminor=1)), "device"),
    "block-device": (_raw(E(path="dev/sda", kind="block", devmajor=8, devminor=0)), "device"),
    "whiteout-root": (_raw(("./.wh..", b"")), "whiteout"),
    "whiteout-empty": (_raw((".wh.", b"")), "whiteout"),
    "oversized-component": (_raw(("a" * 300, b"x")), "longer than 255"),
    "oversized-path": (_raw(("/".join(["d" * 200] * 25), b"x")), "bytes long"),
    "absurd-size": (_huge_file_tar(), "absurd file size"),
    "file-replaces-root": (_raw((".", b"x")), "replace the image root"),
    "write-through-file": (_raw(("etc", b"file"), ("etc/passwd", b"x")), "not a directory"),
    "not-a-tar": (b"this is not a tar archive at all" * 40, "tar"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer_is_refused_with_a_located_one_line_error(
    case: str, spool: Spool, tmp_path: Path
) -> None:
    data, reason = HOSTILE[case]
    tree = Tree()
    with pytest.raises(HostileInputError) as info:
        apply_layer(tree, io.BytesIO(data), spool, ORIGIN)
    message = info.value.message
    assert "\n" not in message
    assert "image example.org/app:1" in message and "layer sha256:0123456789ab" in message
    assert "entry " in message
    assert reason in message
    assert info.value.exit_code == 2
    # nothing outside the build's directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool"]
