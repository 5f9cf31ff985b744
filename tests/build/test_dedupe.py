"""Identical container files stored once: the initrd carries one copy of a busybox two
containers share (GNU cpio sees a link count of 2 and extracts both names), the tar links
them too, files that differ in any metadata a link shares stay apart, the host root and
what a writable bind exposes are never linked, and the bytes are the same every build."""

from __future__ import annotations

import gzip
import io
import json
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from provision.assemble.dedupe import dedupe_container_files
from provision.assemble.root import assemble_root
from provision.assemble.tree import Node, NodeKind, Spool, Tree
from provision.build import build_image
from provision.builders.cpio import write_cpio
from provision.oci.imagebuild import LayerEntry as E
from provision.oci.imagebuild import tar_layer_from_entries, write_image
from provision.oci.store import ImageStore
from provision.spec.load import load_spec

REG = "registry.example.test"
KERNEL, INIT = f"{REG}/dedupe-kernel:1", f"{REG}/dedupe-init:1"
BUSYBOX = random.Random(7).randbytes(256_000)  # incompressible: one copy is visible in size
TOOL = b"#!/bin/sh\necho tool\n" * 50
HOST_BUSYBOX = b"BUSYBOX" * 1000  # the init image's /bin/busybox
EPOCH = 1_600_000_000
FIRST, SECOND = f"{REG}/first:1", f"{REG}/second:1"

SPEC = f"""\
kernel:
  image: {KERNEL}
  cmdline: "console=ttyS0"
  tar: none
init:
  - {INIT}
onboot:
  - name: first
    image: {FIRST}
services:
  - name: second
    image: {SECOND}
    readonly: true
"""
ONBOOT_BUSYBOX = "containers/onboot/000-first/lower/bin/busybox"
SERVICE_BUSYBOX = "containers/services/second/rootfs/bin/busybox"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    store = ImageStore(tmp_path_factory.mktemp("dedupe-store"))
    write_image(
        store, KERNEL, [tar_layer_from_entries([("kernel", b"KERNEL" * 100)])], {}, created=EPOCH
    )
    write_image(
        store,
        INIT,
        [
            tar_layer_from_entries(
                [
                    ("bin/", None),
                    E.file("bin/busybox", HOST_BUSYBOX, mode=0o755),
                    E.hardlink("bin/sh", "bin/busybox"),
                ]
            )
        ],
        {},
        created=EPOCH,
    )
    for ref, tool_mode in ((FIRST, 0o755), (SECOND, 0o750)):
        write_image(
            store,
            ref,
            [
                tar_layer_from_entries(
                    [
                        ("bin/", None),
                        E.file("bin/busybox", BUSYBOX, mode=0o755),
                        E.hardlink("bin/sh", "bin/busybox"),
                        E.file("bin/tool", TOOL, mode=tool_mode),  # same bytes, other mode
                        E.file("bin/host-copy", HOST_BUSYBOX, mode=0o755),  # as the host's busybox
                    ]
                )
            ],
            {"Cmd": ["/bin/sh"]},
            created=EPOCH,
        )
    return store


def build(store: ImageStore, tmp_path: Path, spec: str = SPEC, out: str = "out") -> Path:
    path = tmp_path / "machine.yml"
    path.write_text(spec)
    build_image(
        [path], store=store, formats="kernel+initrd,tar", outdir=tmp_path / out, pull="never"
    )
    return tmp_path / out


def gnu_cpio(archive: Path, *args: str, cwd: Path | None = None) -> list[str]:
    done = subprocess.run(
        ["cpio", *args, "--quiet", "-F", str(archive)],
        check=True,
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    return done.stdout.splitlines()


def test_two_containers_share_one_busybox_in_the_initrd(store: ImageStore, tmp_path: Path) -> None:
    out = build(store, tmp_path)
    archive = tmp_path / "root.cpio"
    archive.write_bytes(gzip.decompress((out / "machine-initrd.img").read_bytes()))
    listing = {
        line.split()[-1]: line.split() for line in gnu_cpio(archive, "-itv") if "->" not in line
    }
    names = [
        ONBOOT_BUSYBOX,
        ONBOOT_BUSYBOX.replace("busybox", "sh"),
        SERVICE_BUSYBOX,
        SERVICE_BUSYBOX.replace("busybox", "sh"),
    ]
    for name in names:
        assert listing[name][1] == "4", listing[name]  # four names, one inode
    # files differing only in mode stay two files
    assert listing["containers/onboot/000-first/lower/bin/tool"][1] == "1"
    assert listing["containers/services/second/rootfs/bin/tool"][1] == "1"
    # the host root is never linked: two names (the init image's own bin/sh link) each
    assert listing["bin/busybox"][1] == "2"
    assert listing["containers/services/second/rootfs/bin/host-copy"][1] == "2"
    assert archive.stat().st_size < len(BUSYBOX) * 1.5  # one copy of the data

    extract = tmp_path / "x"
    extract.mkdir()
    gnu_cpio(archive, "-idm", "--no-absolute-filenames", cwd=extract)
    stats = [(extract / name).stat() for name in names]
    assert len({s.st_ino for s in stats}) == 1 and stats[0].st_nlink == 4
    for name in names:
        assert (extract / name).read_bytes() == BUSYBOX
    tools = [
        extract / "containers/onboot/000-first/lower/bin/tool",
        extract / "containers/services/second/rootfs/bin/tool",
    ]
    assert tools[0].stat().st_ino != tools[1].stat().st_ino
    assert [t.stat().st_mode & 0o777 for t in tools] == [0o755, 0o750]
    assert all(t.read_bytes() == TOOL for t in tools)

    with tarfile.open(out / "machine.tar") as tar:
        members = {m.name: m for m in tar}
    assert members[ONBOOT_BUSYBOX].isfile()
    assert members[SERVICE_BUSYBOX].islnk()
    assert members[SERVICE_BUSYBOX].linkname == ONBOOT_BUSYBOX
    assert not members["containers/services/second/rootfs/bin/tool"].islnk()


def test_the_initrd_is_smaller_than_without_links(store: ImageStore, tmp_path: Path) -> None:
    path = tmp_path / "machine.yml"
    path.write_text(SPEC)
    spec = load_spec([path])
    images = {ref: store.resolve(ref) for ref in (KERNEL, INIT, FIRST, SECOND)}
    sizes = []
    for dedupe in (True, False):
        spool = Spool(tmp_path / f"spool-{dedupe}")
        tree = assemble_root(
            spec,
            images,
            store,
            spool,
            epoch=EPOCH,
            name="m",
            digest="sha256:" + "0" * 64,
            dedupe=dedupe,
        )
        out = io.BytesIO()
        sizes.append(write_cpio(tree, spool, out, epoch=EPOCH))
        spool.close()
    linked, separate = sizes
    assert separate - linked >= len(BUSYBOX)


def test_builds_are_byte_for_byte_the_same(store: ImageStore, tmp_path: Path) -> None:
    one, two = build(store, tmp_path, out="one"), build(store, tmp_path, out="two")
    for name in ("machine-initrd.img", "machine.tar"):
        assert (one / name).read_bytes() == (two / name).read_bytes()


def test_a_writable_bind_of_containers_turns_linking_off(store: ImageStore, tmp_path: Path) -> None:
    spec = SPEC + '    binds: ["/containers:/containers"]\n'
    with tarfile.open(build(store, tmp_path, spec) / "machine.tar") as tar:
        assert not tar.getmember(SERVICE_BUSYBOX).islnk()
    spec = SPEC + '    binds: ["/containers:/containers:ro"]\n'
    with tarfile.open(build(store, tmp_path, spec, out="ro") / "machine.tar") as tar:
        assert tar.getmember(SERVICE_BUSYBOX).islnk()


# -- the rule on hand-made trees -------------------------------------------------------------


def make_tree(
    spool: Spool,
    first: dict[str, object],
    second: dict[str, object],
    *,
    mounts: list[dict[str, object]] | None = None,
    paths: tuple[str, str] = (
        "containers/services/a/rootfs/bin/f",
        "containers/services/b/lower/bin/f",
    ),
) -> Tree:
    tree = Tree()
    for path, meta in zip(paths, (first, second), strict=True):
        content, mode = meta.pop("content", b"same content"), meta.pop("mode", 0o755)
        assert isinstance(content, bytes) and isinstance(mode, int)
        offset, size = spool.add_bytes(content)
        node = Node(NodeKind.FILE, mode, offset=offset, size=size)
        for key, value in meta.items():
            setattr(node, key, value)
        tree.put(path, node)
    for leaf in ("a", "b"):
        config = {"mounts": mounts if leaf == "b" and mounts else []}
        offset, size = spool.add_bytes(json.dumps(config).encode())
        tree.put(
            f"containers/services/{leaf}/config.json",
            Node(NodeKind.FILE, 0o644, offset=offset, size=size),
        )
    return tree


def linked(
    tree: Tree,
    paths: tuple[str, str] = (
        "containers/services/a/rootfs/bin/f",
        "containers/services/b/lower/bin/f",
    ),
) -> bool:
    one, two = (tree.lookup(p) for p in paths)
    assert one is not None and two is not None
    return one is two


@pytest.mark.parametrize(
    ("first", "second", "expect"),
    [
        ({}, {}, True),
        ({"mode": 0o755}, {"mode": 0o4755}, False),
        ({"uid": 0}, {"uid": 33}, False),
        ({"gid": 0}, {"gid": 33}, False),
        ({"mtime": 100}, {"mtime": 200}, False),
        ({"mtime": EPOCH + 5}, {"mtime": EPOCH + 9}, True),  # both clamped to the epoch
        ({"xattrs": {"security.capability": b"\x01"}}, {}, False),
        ({"content": b"same size A"}, {"content": b"same size B"}, False),
        ({"content": b""}, {"content": b""}, False),  # empty files cost nothing
    ],
    ids=["same", "mode", "uid", "gid", "mtime", "mtime-clamped", "xattrs", "content", "empty"],
)
def test_only_files_equal_in_content_and_metadata_are_linked(
    tmp_path: Path, first: dict[str, object], second: dict[str, object], expect: bool
) -> None:
    spool = Spool(tmp_path / "spool")
    tree = make_tree(spool, dict(first), dict(second))
    dedupe_container_files(tree, spool, epoch=EPOCH)
    assert linked(tree) is expect


@pytest.mark.parametrize(
    ("paths", "expect"),
    [
        (("containers/services/a/rootfs/bin/f", "bin/f"), False),  # host root
        (("containers/services/a/rootfs/bin/f", "containers/volumes/v/f"), False),
        (("containers/services/a/rootfs/bin/f", "containers/services/b/tmp/f"), False),
        (("containers/services/a/rootfs/bin/f", "containers/onshutdown/000-b/rootfs/f"), True),
        (("containers/services/a/rootfs/bin/f", "containers/services/a/rootfs/bin/g"), True),
    ],
    ids=["host-root", "volume", "bundle-tmp", "onshutdown", "same-container"],
)
def test_only_container_roots_are_linked(
    tmp_path: Path, paths: tuple[str, str], expect: bool
) -> None:
    spool = Spool(tmp_path / "spool")
    tree = make_tree(spool, {}, {}, paths=paths)
    dedupe_container_files(tree, spool, epoch=EPOCH)
    assert linked(tree, paths) is expect


def bind(source: str, *options: str) -> dict[str, object]:
    return {"destination": "/mnt", "type": "bind", "source": source, "options": [*options, "rbind"]}


@pytest.mark.parametrize(
    ("mount", "symlink", "expect"),
    [
        (bind("/containers", "rw"), None, False),
        (bind("/", "rw"), None, False),
        (bind("/containers/services/b/lower/bin/f", "rw"), None, False),
        (bind("/containers/services/b/lower/bin/../bin", "rw"), None, False),
        (bind("/mnt/bin", "rw"), ("mnt", "/containers/services/b/lower"), False),
        (bind("/containers", "ro"), None, True),
        (bind("/containers/services/b/lower/etc", "rw"), None, True),
        (bind("/run/resolvconf", "rw"), None, True),
        (
            {"destination": "/x", "type": "none", "source": "/containers", "options": ["rbind"]},
            None,
            False,
        ),
        (bind("lower", "rw"), None, False),  # relative to the bundle, containers/services/b
    ],
    ids=[
        "containers",
        "root",
        "the-file",
        "dotdot",
        "through-symlink",
        "read-only",
        "another-dir",
        "elsewhere",
        "rbind-option",
        "bundle-relative",
    ],
)
def test_a_writable_bind_leaves_what_it_exposes_alone(
    tmp_path: Path, mount: dict[str, object], symlink: tuple[str, str] | None, expect: bool
) -> None:
    spool = Spool(tmp_path / "spool")
    tree = make_tree(spool, {}, {}, mounts=[mount])
    if symlink is not None:
        tree.put(symlink[0], Node(NodeKind.SYMLINK, 0o777, target=symlink[1]))
    result = dedupe_container_files(tree, spool, epoch=EPOCH)
    assert linked(tree) is expect
    assert bool(result.exposed) is (mount["options"] != ["ro", "rbind"])


ELF = b"\x7fELF\x02\x01\x01" + b"program" * 100


@pytest.mark.parametrize(
    ("content", "init_link", "mount", "expect"),
    [
        (ELF, "../bin/busybox", None, True),
        (ELF, "/bin/busybox", None, True),
        (b"#!/bin/sh\n" + b"x" * 100, "../bin/busybox", None, False),  # a script: not ETXTBSY
        (ELF, None, None, False),  # no /sbin/init: not pid 1's program
        (ELF, "../bin/other", None, False),  # /sbin/init is another file
        (ELF, "../bin/busybox", bind("/bin", "rw"), False),  # a container may write it
        (ELF, "../bin/busybox", bind("/sbin/init", "rw"), False),
        (ELF, "../bin/busybox", bind("/bin", "ro"), True),
    ],
    ids=["elf", "absolute-link", "script", "no-init", "other-file", "exposed", "exposed-by-init",
         "read-only-bind"],
)  # fmt: skip
def test_the_host_init_program_is_linked_with_equal_container_files(
    tmp_path: Path,
    content: bytes,
    init_link: str | None,
    mount: dict[str, object] | None,
    expect: bool,
) -> None:
    """pid 1's executable can't be written while the machine runs (ETXTBSY): it alone of
    the host root is shared with the containers' equal copies."""
    spool = Spool(tmp_path / "spool")
    paths = ("bin/busybox", "containers/services/b/lower/bin/busybox")
    tree = make_tree(spool, {"content": content}, {"content": content}, paths=paths,
                     mounts=[mount] if mount else None)  # fmt: skip
    offset, size = spool.add_bytes(b"\x7fELF other")
    tree.put("bin/other", Node(NodeKind.FILE, 0o755, offset=offset, size=size))
    if init_link is not None:
        tree.put("sbin/init", Node(NodeKind.SYMLINK, 0o777, target=init_link))
    result = dedupe_container_files(tree, spool, epoch=EPOCH)
    assert linked(tree, paths) is expect
    host = tree.lookup("bin/busybox")
    assert host is not None
    if expect:  # the host keeps its node; the container's name points at it
        assert tree.lookup("containers/services/b/lower/bin/busybox") is host
        assert result.saved_bytes == len(content)
