"""Three constructs LinuxKit accepts (its own examples use them) that provision refused:
two onboot / onshutdown entries with one name, a relative mount destination (inside the
container's root) and ``kernel.ucode: ""`` (no microcode). Each loads with LinuxKit's meaning;
replace / remove by name keep working where a name is unique."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from provision.assemble.runtime_config import render_runtime_bundle
from provision.errors import SpecError
from provision.spec.load import load_spec

LINUXKIT = Path(__file__).resolve().parent / "linuxkit"
Write = Callable[[str, str], Path]


def test_onboot_and_onshutdown_entries_may_share_a_name_and_keep_their_order() -> None:
    spec = load_spec([LINUXKIT / "onboot-same-name-twice.yml"])
    assert [e.name for e in spec.onboot] == ["mount", "dm-crypt", "mount"]
    assert [e.command for e in spec.onboot][0] == ("/usr/bin/mountie", "/dev/sda1", "/var/external")
    assert spec.onboot[2].command == (
        "/usr/bin/mountie",
        "/dev/mapper/crypt_loop_dev",
        "/var/secure_storage",
    )
    assert [e.command for e in spec.onshutdown] == [("/bin/echo", "one"), ("/bin/echo", "two")]


def test_services_must_still_have_unique_names(write: Write) -> None:
    path = write(
        "dup.yml",
        "services:\n  - name: a\n    image: busybox:1\n  - name: a\n    image: busybox:1\n",
    )
    with pytest.raises(SpecError, match="duplicate service name 'a'"):
        load_spec([path])


def test_replace_and_remove_by_a_unique_name_work_beside_shared_names(write: Write) -> None:
    later = write(
        "later.yml",
        """\
remove:
  onboot: [dm-crypt]
onshutdown:
  - name: getty-bye
    image: busybox:1.36
services:
  - name: getty
    image: linuxkit/getty:v2
    replace: true
""",
    )
    spec = load_spec([LINUXKIT / "onboot-same-name-twice.yml", later])
    assert [e.name for e in spec.onboot] == ["mount", "mount"]
    assert [e.name for e in spec.onshutdown] == ["say", "say", "getty-bye"]
    assert spec.services[0].image == "linuxkit/getty:v2"


@pytest.mark.parametrize(
    "text, key",
    [
        ("remove:\n  onboot: [mount]\n", "remove.onboot[0]"),
        (
            "onboot:\n  - name: mount\n    image: linuxkit/mount:v2\n    replace: true\n",
            "onboot[0].replace",
        ),
        ("remove:\n  onshutdown: [say]\n", "remove.onshutdown[0]"),
    ],
)
def test_replace_or_remove_of_a_shared_name_is_a_located_error(
    text: str, key: str, write: Write
) -> None:
    later = write("later.yml", text)
    with pytest.raises(SpecError) as caught:
        load_spec([LINUXKIT / "onboot-same-name-twice.yml", later])
    (problem,) = caught.value.problems
    assert problem.file == str(later) and problem.key == key
    assert "2 earlier" in problem.message and "unique name only" in problem.message


def test_a_relative_mount_destination_lies_inside_the_container_root() -> None:
    spec = load_spec([LINUXKIT / "mount-relative-destination.yml"])
    getty, web = spec.services
    bundle = render_runtime_bundle(getty, {}, None, role="services")
    # runtime.json keeps it as written: init mounts it under the bundle's rootfs
    (mount,) = bundle.runtime["mounts"]
    assert mount["destination"] == "writeable-host-etc" and mount["type"] == "overlay"
    assert "lowerdir=/etc" in mount["options"]
    assert bundle.runtime["mkdir"] == ["/run/hostetc/upper", "/run/hostetc/work"]
    # config.json: the same place, written absolute (runc reads relative ones the same way)
    config = render_runtime_bundle(web, {}, None, role="services").config
    destinations = [m["destination"] for m in config["mounts"]]
    assert "/var/cache/nginx" in destinations and "var/cache/nginx" not in destinations
    assert destinations == sorted(destinations)


def test_kernel_ucode_empty_means_no_microcode(write: Write) -> None:
    spec = load_spec([LINUXKIT / "kernel-ucode-empty.yml"])
    assert spec.kernel is not None and spec.kernel.ucode is None
    left_out = write("plain.yml", "kernel:\n  image: linuxkit/kernel:6.6.71\n")
    plain = load_spec([left_out]).kernel
    assert plain is not None and plain.ucode is None
