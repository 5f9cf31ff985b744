"""Recipe validation (every problem, located) and the ELF reader, without packages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pkg_testkit import REPO, write_recipe

from provision.builders.pkg import find_recipes, load_recipe
from provision.builders.pkg.elf import ImageTree, check_elf_closure, parse_elf
from provision.errors import SpecError
from provision.oci.imagebuild import LayerEntry


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "bad", """\
name: Bad Name
packages: [busybox-static, busybox-static]
keep:
  runc: [/usr/sbin/runc]
  busybox-static: [bin/busybox]
files:
  - {source: ../../etc/passwd, path: /etc/passwd}
  - {path: /etc/../x, contents: "x", mode: "999"}
symlinks: {/bin/sh: busybox, "relative": busybox}
config: {Entrypoint: [/bin/sh], Healthcheck: {}}
kernel: {package: linux-image-cloud-amd64, modules: ["virtio net"]}
unknown: 1
""")  # fmt: skip
    with pytest.raises(SpecError) as caught:
        load_recipe(recipe)
    text = str(caught.value)
    expected = [
        "build.yml:1:7: name:",
        "build.yml:2:28: packages[1]: busybox-static: listed twice",
        "build.yml:4:9: keep.runc: not one of the recipe's packages",
        "keep.busybox-static[0]: 'bin/busybox': a glob of absolute paths",
        "build.yml:7:14: files[0].source: a path relative to the recipe directory",
        "files[1].path: required: an absolute path inside the image",
        "files[1].mode: an octal string",
        "symlinks.relative: not an absolute path inside the image",
        "config.Healthcheck: not an OCI image config key",
        "kernel.modules[0]: 'virtio net'",
        "build.yml:12:10: unknown: unknown key",
    ]
    for fragment in expected:
        assert fragment in text, fragment
    assert len(caught.value.problems) == len(expected)


def test_project_recipes_parse() -> None:
    names = {load_recipe(d).name for d in find_recipes(REPO / "pkg")}
    assert {"kernel", "kernel-generic", "init"} <= names


def test_elf_reader_on_host_binaries() -> None:
    info = parse_elf(Path("/bin/true").read_bytes())
    assert info is not None and info.elf_class == 64
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert info.needed == ("libc.so.6",)
    static = parse_elf(Path("/bin/busybox").read_bytes())
    assert static is not None and static.needed == () and static.interpreter is None
    assert parse_elf(b"#!/bin/sh\n") is None


def test_closure_follows_symlinks_inside_the_image() -> None:
    true = Path("/bin/true").read_bytes()
    libc = b"\x7fELF" + b"\0" * 60  # not parseable: ignored as a dependency source
    entries = {
        "/bin/true": LayerEntry.file("bin/true", true, 0o755),
        "/lib64": LayerEntry.symlink("lib64", "/lib/x86_64-linux-gnu"),
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": LayerEntry.file("l", libc),
        "/lib/x86_64-linux-gnu/libc.so.6": LayerEntry.symlink("c", "libc-2.36.so"),
    }
    missing = check_elf_closure(entries)
    assert [str(m) for m in missing] == [
        "/bin/true: needs libc.so.6, which is not in the image"  # dangling symlink
    ]
    entries["/lib/x86_64-linux-gnu/libc-2.36.so"] = LayerEntry.file("c2", libc)
    assert check_elf_closure(entries) == []
    tree = ImageTree(entries)
    assert tree.resolve("/bin/../lib64/libc.so.6") == "/lib/x86_64-linux-gnu/libc-2.36.so"
    loop = ImageTree({"/a": LayerEntry.symlink("a", "/b"), "/b": LayerEntry.symlink("b", "a")})
    assert loop.resolve("/a") is None


@pytest.mark.parametrize(
    ("content", "where", "message"),
    [
        (
            "name: x\npackages: " + "[" * 200 + "]" * 200 + "\n",
            (2, 74),
            "nested deeper than 64 levels",
        ),
        ("name: x\x00\n", (1, 8), "character U+0000 is not allowed in YAML"),
    ],
)
def test_a_hostile_build_yml_is_one_located_problem(
    tmp_path: Path, content: str, where: tuple[int, int], message: str
) -> None:
    recipe = tmp_path / "thing"
    recipe.mkdir()
    (recipe / "build.yml").write_text(content)
    started = time.monotonic()
    with pytest.raises(SpecError) as caught:
        load_recipe(recipe)
    assert time.monotonic() - started < 1.0
    [problem] = caught.value.problems
    assert (problem.line, problem.column) == where and message in problem.message
