"""Merging several files: LinuxKit's rules, then this project's replace/remove extension."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from provision.errors import SpecError
from provision.spec.load import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "linuxkit"

Write = Callable[[str, str], Path]
BASE = """\
kernel:
  image: linuxkit/kernel:6.6
  cmdline: console=ttyS0
  tar: none
init: [linuxkit/init:v1]
onboot:
  - name: sysctl
    image: linuxkit/sysctl:v1
  - name: dhcpcd
    image: linuxkit/dhcpcd:v1
  - name: mount
    image: linuxkit/mount:v1
services:
  - name: getty
    image: linuxkit/getty:v1
  - name: rngd
    image: linuxkit/rngd:v1
files:
  - path: /etc/issue
    contents: base
  - path: etc/motd
    contents: hello
volumes:
  - name: data
  - name: assets
    readonly: true
"""


def problems_of(paths: list[Path]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(paths)
    return [str(p) for p in caught.value.problems]


def test_linuxkit_rules_kernel_last_non_empty_lists_appended(write: Write) -> None:
    base = write("base.yml", BASE)
    extra = write(
        "extra.yml",
        """\
kernel:
  image: linuxkit/kernel:6.7
  cmdline: ""
init: [linuxkit/runc:v1]
services:
  - name: sshd
    image: linuxkit/sshd:v1
files:
  - path: etc/extra
    contents: x
""",
    )
    spec = load_spec([base, extra])
    assert spec.kernel is not None
    assert (spec.kernel.image, spec.kernel.cmdline, spec.kernel.tar) == (
        "linuxkit/kernel:6.7",
        "console=ttyS0",
        None,
    )
    assert spec.init == ("linuxkit/init:v1", "linuxkit/runc:v1")
    assert [s.name for s in spec.services] == ["getty", "rngd", "sshd"]
    assert [f.path for f in spec.files] == ["/etc/issue", "etc/motd", "etc/extra"]
    assert spec.sources == (str(base), str(extra))


def test_a_duplicate_service_across_files_is_located_in_the_later_file(write: Write) -> None:
    base = write("base.yml", BASE)
    extra = write("extra.yml", "services:\n  - name: rngd\n    image: linuxkit/rngd:v2\n")
    assert problems_of([base, extra]) == [
        f"{extra}:2:5: services[0].name: duplicate service name 'rngd' (first at {base}:16; "
        "use replace: true to override it)"
    ]


def test_replace_keeps_the_position_and_takes_the_whole_new_entry(write: Write) -> None:
    base = write("base.yml", BASE)
    extra = write(
        "extra.yml",
        """\
onboot:
  - name: dhcpcd
    replace: true
    image: linuxkit/dhcpcd:v2
    command: [/sbin/dhcpcd, "-1"]
services:
  - name: getty
    replace: true
    image: linuxkit/getty:v2
files:
  - path: etc/issue
    replace: true
    contents: production
volumes:
  - name: assets
    replace: true
""",
    )
    spec = load_spec([base, extra])
    assert [(e.name, e.image) for e in spec.onboot] == [
        ("sysctl", "linuxkit/sysctl:v1"),
        ("dhcpcd", "linuxkit/dhcpcd:v2"),
        ("mount", "linuxkit/mount:v1"),
    ]
    assert spec.onboot[1].command == ("/sbin/dhcpcd", "-1")
    assert spec.services[0].image == "linuxkit/getty:v2"
    assert [(f.path, f.contents) for f in spec.files] == [
        ("etc/issue", "production"),
        ("etc/motd", "hello"),
    ]
    assert [(v.name, v.readonly) for v in spec.volumes] == [("data", False), ("assets", False)]


def test_remove_drops_earlier_entries_and_a_name_can_come_back(write: Write) -> None:
    base = write("base.yml", BASE)
    extra = write(
        "extra.yml",
        """\
remove:
  init: [linuxkit/init:v1]
  onboot: [mount]
  services: [getty, rngd]
  files: [etc/issue, /etc/motd]
  volumes: [data]
services:
  - name: getty
    image: linuxkit/getty:v3
""",
    )
    spec = load_spec([base, extra])
    assert spec.init == ()
    assert [e.name for e in spec.onboot] == ["sysctl", "dhcpcd"]
    assert [(s.name, s.image) for s in spec.services] == [("getty", "linuxkit/getty:v3")]
    assert spec.files == ()
    assert [v.name for v in spec.volumes] == ["assets"]


def test_replace_and_remove_of_nothing_are_located_errors(write: Write) -> None:
    base = write("base.yml", BASE)
    extra = write(
        "extra.yml",
        """\
remove:
  services: [gety]
services:
  - name: sshd
    replace: true
    image: linuxkit/sshd:v1
""",
    )
    assert problems_of([base, extra]) == [
        f"{extra}:2:14: remove.services[0]: no earlier service 'gety' to remove",
        f"{extra}:4:5: services[0].replace: no earlier service 'sshd' to replace",
    ]


def test_problems_of_every_file_are_reported_together(write: Write) -> None:
    first = write("a.yml", "services:\n  - name: a\n    image: busybox:1\n    pid: nope\n")
    second = write("b.yml", "servics: []\n")
    assert problems_of([first, second]) == [
        f"{first}:4:10: services[0].pid: bad namespace 'nope': host, root, new or a path",
        f"{second}:1:1: servics: unknown key 'servics' (did you mean 'services'?)",
    ]


def test_volume_binds_are_checked_across_files(write: Write) -> None:
    base = write("base.yml", BASE)
    ok = write(
        "ok.yml",
        "services:\n  - name: w\n    image: nginx:1\n    binds: [data:/data, 'assets:/srv:ro']\n",
    )
    assert [s.name for s in load_spec([base, ok]).services][-1] == "w"
    bad = write(
        "bad.yml", "services:\n  - name: w\n    image: nginx:1\n    binds.add: ['assets:/srv']\n"
    )
    assert problems_of([base, bad]) == [
        f"{bad}:4:17: services[0].binds.add[0]: read-write bind of read-only volume "
        "'assets' (add :ro)"
    ]


def test_a_kernel_section_without_image_after_merge_is_an_error(write: Write) -> None:
    only = write("k.yml", "kernel:\n  cmdline: quiet\n")
    assert problems_of([only]) == [f"{only}:2:3: kernel: missing required key 'image'"]
    base = write("base.yml", BASE)
    spec = load_spec([base, only])
    assert spec.kernel is not None and spec.kernel.cmdline == "quiet"


def test_the_overlay_example(tmp_path: Path) -> None:
    spec = load_spec([EXAMPLES / "base.yml", EXAMPLES / "overlay.yml"])
    assert spec.kernel is not None and spec.kernel.cmdline == "console=ttyS0 quiet"
    assert [s.name for s in spec.services] == ["rngd", "web"]
    assert spec.services[0].readonly is True
    assert [(f.path, f.contents) for f in spec.files] == [("/etc/issue", "production machine\n")]


def test_missing_and_unreadable_files_are_problems_not_crashes(
    write: Write, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.yml"
    binary = write("bin.yml", "")
    binary.write_bytes(b"\xff\xfe\x00services")
    found = problems_of([missing, binary])
    assert found[0] == f"{binary}:1:1: not UTF-8 text (byte 0xff)"
    assert found[1].startswith(f"{missing}: cannot read: No such file")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "files:\n  - path: etc/big\n    contents: '" + "x" * (5 * 1024 * 1024) + "'\n",
            "longer than 4194304 bytes",
        ),
        (
            "services:\n"
            + "".join(f"  - name: s{i}\n    image: busybox:1\n" for i in range(2))
            + "    env: ["
            + ", ".join(["A=1"] * 5000)
            + "]\n",
            "more than 4096 items",
        ),
        ("files:\n  - path: /" + "d/" * 3000 + "f\n    contents: x\n", "longer than 4096 bytes"),
    ],
)
def test_oversized_fields_are_refused(write: Write, text: str, message: str) -> None:
    found = problems_of([write("big.yml", text)])
    assert len(found) == 1 and message in found[0]
