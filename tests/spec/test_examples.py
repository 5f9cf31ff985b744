"""The LinuxKit-style examples validate, use every field of the format, and survive a
dump/load round trip unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from provision.spec.image import ImageEntry, ImageSpec, KernelSpec, dump_spec, spec_to_dict
from provision.spec.load import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "linuxkit"
ROOT = Path(__file__).resolve().parents[2]

# Every key of LinuxKit's JSON schema (src/cmd/linuxkit/moby/schema.go), as dotted paths with
# [] for list items, plus volumes (which LinuxKit checks in Go code rather than the schema).
LINUXKIT_KEYS = {
    "kernel",
    "kernel.image",
    "kernel.cmdline",
    "kernel.binary",
    "kernel.tar",
    "kernel.ucode",
    "init",
    "onboot",
    "onshutdown",
    "services",
    "files",
    "volumes",
    "trust",
    "trust.org",
    *(
        f"files[].{k}"
        for k in (
            "path",
            "directory",
            "symlink",
            "contents",
            "source",
            "metadata",
            "optional",
            "mode",
            "uid",
            "gid",
        )
    ),
    *(f"volumes[].{k}" for k in ("name", "image", "readonly", "format", "platforms")),
    *(
        f"services[].{k}"
        for k in (
            "name",
            "image",
            "capabilities",
            "capabilities.add",
            "ambient",
            "mounts",
            "binds",
            "binds.add",
            "devices",
            "tmpfs",
            "command",
            "env",
            "cwd",
            "net",
            "pid",
            "ipc",
            "uts",
            "userns",
            "readonly",
            "maskedPaths",
            "readonlyPaths",
            "uid",
            "gid",
            "additionalGids",
            "noNewPrivileges",
            "hostname",
            "oomScoreAdj",
            "rootfsPropagation",
            "cgroupsPath",
            "resources",
            "sysctl",
            "rlimits",
            "uidMappings",
            "gidMappings",
            "annotations",
            "runtime",
        )
    ),
    *(f"services[].mounts[].{k}" for k in ("destination", "type", "source", "options")),
    *(f"services[].devices[].{k}" for k in ("path", "type", "major", "minor", "mode")),
    *(f"services[].uidMappings[].{k}" for k in ("hostID", "containerID", "size")),
    *(
        f"services[].resources.{k}"
        for k in ("devices", "memory", "cpu", "pids", "blockio", "hugepageLimits", "network")
    ),
    *(f"services[].resources.devices[].{k}" for k in ("allow", "access")),
    *(
        f"services[].resources.memory.{k}"
        for k in ("limit", "reservation", "swap", "swappiness", "disableOOMKiller")
    ),
    *(f"services[].resources.cpu.{k}" for k in ("shares", "quota", "period", "cpus", "mems")),
    "services[].resources.pids.limit",
    *(
        f"services[].resources.blockio.{k}"
        for k in ("weight", "weightDevice", "throttleReadBpsDevice")
    ),
    "services[].resources.hugepageLimits[].pageSize",
    "services[].resources.network.classID",
    "services[].resources.network.priorities[].priority",
    *(
        f"services[].runtime.{k}"
        for k in ("cgroups", "mounts", "mkdir", "interfaces", "bindNS", "namespace")
    ),
    *(f"services[].runtime.interfaces[].{k}" for k in ("name", "add", "peer", "createInRoot")),
    *(f"services[].runtime.bindNS.{k}" for k in ("net", "ipc", "uts")),
}


def key_paths(value: Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.add(path)
            paths |= key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            paths |= key_paths(item, prefix + "[]")
    return paths


def used_keys(*files: Path) -> set[str]:
    used: set[str] = set()
    for file in files:
        used |= key_paths(yaml.safe_load(file.read_text()))
    # an image entry field is covered whichever section uses it
    return {p.replace("onboot[]", "services[]").replace("onshutdown[]", "services[]") for p in used}


def test_the_examples_use_every_field_of_the_format() -> None:
    missing = LINUXKIT_KEYS - used_keys(*EXAMPLES.glob("*.yml"))
    assert not missing, sorted(missing)


@pytest.mark.parametrize("name", ["full.yml", "sshd.yml", "base.yml"])
def test_linuxkit_examples_validate(name: str) -> None:
    spec = load_spec([EXAMPLES / name])
    assert spec.init and spec.kernel is not None
    assert spec.sources == (str(EXAMPLES / name),)


@pytest.mark.parametrize("name", ["minimal.yml", "sshd.yml", "web.yml"])
def test_project_examples_validate(name: str) -> None:
    load_spec([ROOT / "examples" / name])


def test_full_example_values() -> None:
    spec = load_spec([EXAMPLES / "full.yml"])
    assert spec.kernel == KernelSpec(
        "linuxkit/kernel:6.6.13",
        "console=tty0 console=ttyS0 page_poison=1",
        "kernel",
        "kernel.tar",
        "intel-ucode.cpio",
    )
    assert [e.name for e in spec.onboot] == ["sysctl", "format", "mount", "dhcpcd"]
    app = next(e for e in spec.services if e.name == "app")
    assert isinstance(app, ImageEntry)
    assert app.capabilities == ("CAP_NET_BIND_SERVICE", "CAP_CHOWN")
    assert app.uid == 1000 and app.gid == "sshd" and app.additional_gids == (100, "rngd")
    assert app.resources is not None and app.resources["memory"]["limit"] == 536870912
    assert app.runtime is not None and app.runtime.bind_ns is not None
    assert app.runtime.bind_ns.net == "/run/netns/app"
    assert (
        app.cwd == "/srv/app"
        and app.readonly is True
        and app.env == ("APP_MODE=production", "GOMAXPROCS=2")
    )
    getty = spec.services[0]
    assert getty.capabilities is None and getty.capabilities_add == ("CAP_SYS_TTY_CONFIG",)
    motd = next(f for f in spec.files if f.path == "etc/motd")
    assert motd.source == str(EXAMPLES / "files" / "motd")  # resolved next to the spec
    assert motd.source_as_written == "files/motd"
    keys = next(f for f in spec.files if f.path == "root/.ssh/authorized_keys")
    assert keys.optional and keys.source is not None and not keys.source.startswith("~")
    assert [(v.name, v.readonly, v.format) for v in spec.volumes] == [
        ("appdata", False, "filesystem"),
        ("assets", True, "filesystem"),
        ("bundle", False, "oci"),
    ]


def without_sources(spec: ImageSpec) -> ImageSpec:
    return ImageSpec(
        spec.kernel,
        spec.init,
        spec.onboot,
        spec.onshutdown,
        spec.services,
        spec.files,
        spec.volumes,
    )


@pytest.mark.parametrize("names", [["full.yml"], ["base.yml", "overlay.yml"]])
def test_dump_loads_back_to_the_same_spec(names: list[str], tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "ex")
    spec = load_spec([tmp_path / "ex" / n for n in names])
    text = dump_spec(spec)
    assert dump_spec(spec) == text  # canonical: the same spec, the same text
    dumped = tmp_path / "ex" / "dumped.yml"  # next to the specs, so sources resolve the same
    dumped.write_text(text)
    again = load_spec([dumped])
    assert without_sources(again) == without_sources(spec)
    assert dump_spec(again) == text


def test_spec_to_dict_is_json_ready_and_keeps_linuxkit_key_names() -> None:
    data = spec_to_dict(load_spec([EXAMPLES / "full.yml"]))
    json.dumps(data)
    app = next(s for s in data["services"] if s["name"] == "app")
    assert list(app)[:2] == ["name", "image"]
    assert {"rootfsPropagation", "maskedPaths", "uidMappings", "cgroupsPath"} <= set(app)
    assert data["services"][0]["capabilities.add"] == ["CAP_SYS_TTY_CONFIG"]
    assert data["files"][2] == {"path": "etc/motd", "source": "files/motd", "mode": "0644"}
