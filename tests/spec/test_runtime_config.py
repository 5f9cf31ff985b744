"""config.json / runtime.json golden tests, against the rules of LinuxKit's ConfigToOCI
(src/cmd/linuxkit/moby/config.go): defaults, precedence image < label < YAML, .add forms."""

from __future__ import annotations

import json
from typing import Any

import pytest

from provision.assemble.runtime_config import (
    RuntimeConfigError,
    assign_container_ids,
    render_runtime_bundle,
)
from provision.errors import SpecError
from provision.spec.image import (
    CAPABILITIES,
    ImageConfig,
    ImageEntry,
    ImageSpec,
    VolumeSpec,
    parse_image_config_label,
)

IMAGE = {
    "Entrypoint": ["/bin/web"],
    "Cmd": ["-p", "80"],
    "Env": ["PATH=/usr/bin:/bin"],
    "WorkingDir": "",
    "Labels": {},
}

DEFAULT_MOUNTS = [
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
    },
    {
        "destination": "/proc",
        "type": "proc",
        "source": "proc",
        "options": ["nosuid", "nodev", "noexec", "relatime"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/sys/fs/cgroup",
        "type": "cgroup",
        "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
    },
]


def entry(**fields: Any) -> ImageEntry:
    return ImageEntry(name=fields.pop("name", "web"), image=fields.pop("image", "web:1"), **fields)


def label(text: str) -> ImageConfig:
    return parse_image_config_label(text, "web:1")


def test_defaults_golden() -> None:
    bundle = render_runtime_bundle(entry(), IMAGE, None, volumes=())
    assert bundle.readonly is False
    assert bundle.config == {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/web", "-p", "80"],
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
            "capabilities": {},
        },
        "root": {"path": "rootfs"},
        "mounts": DEFAULT_MOUNTS,
        "linux": {
            "resources": {},
            "cgroupsPath": "/provision/services/web",
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "cgroup"}],
        },
    }
    assert bundle.runtime == {
        "cgroups": [],
        "mounts": [],
        "mkdir": [],
        "interfaces": [],
        "namespace": "",
        "bindNS": {k: "" for k in ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")},
    }


def test_readonly_root_marks_dev_and_sys_read_only() -> None:
    bundle = render_runtime_bundle(entry(readonly=True), IMAGE, None, volumes=())
    assert bundle.readonly is True
    assert bundle.config["root"] == {"path": "rootfs", "readonly": True}
    options = {m["destination"]: m["options"] for m in bundle.config["mounts"]}
    assert options["/dev"][-1] == "ro" and options["/sys"][-1] == "ro"
    assert options["/proc"] == ["nosuid", "nodev", "noexec", "relatime"]


def test_precedence_image_then_label_then_yaml() -> None:
    lab = label(
        json.dumps(
            {
                "command": ["/bin/label-cmd"],
                "env": ["PATH=/label", "FROM_LABEL=1"],
                "cwd": "/lab",
                "capabilities": ["CAP_NET_ADMIN"],
                "binds": ["/lib/modules:/lib/modules"],
                "readonly": True,
                "hostname": "from-label",
                "net": "host",
                "pid": "host",
                "sysctl": {"net.core.somaxconn": "1024"},
            }
        )
    )
    plain = render_runtime_bundle(entry(), IMAGE, lab, volumes=())
    process = plain.config["process"]
    assert process["args"] == ["/bin/label-cmd"]
    assert process["env"] == ["PATH=/label", "FROM_LABEL=1"]
    assert process["cwd"] == "/lab"
    assert process["capabilities"]["effective"] == ["CAP_NET_ADMIN"]
    assert plain.readonly is True and plain.config["hostname"] == "from-label"
    assert {"type": "pid"} not in plain.config["linux"]["namespaces"]
    assert plain.config["linux"]["sysctl"] == {"net.core.somaxconn": "1024"}

    yaml_wins = render_runtime_bundle(
        entry(
            command=("/bin/yaml",),
            env=("FROM_YAML=1", "FROM_LABEL=2"),
            cwd="/y",
            capabilities_add=("CAP_SYS_ADMIN", "CAP_NET_ADMIN"),
            binds_add=("/etc:/etc:ro",),
            readonly=False,
            hostname="from-yaml",
            pid="new",
        ),
        IMAGE,
        lab,
        volumes=(),
    )
    process = yaml_wins.config["process"]
    assert process["args"] == ["/bin/yaml"]
    # env merges by name: the image's PATH (replaced by the label's), label, then YAML
    assert process["env"] == ["PATH=/label", "FROM_LABEL=2", "FROM_YAML=1"]
    assert process["cwd"] == "/y"
    # capabilities.add adds to the label's list (once each)
    assert process["capabilities"]["effective"] == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    binds = {m["destination"]: m for m in yaml_wins.config["mounts"] if m["type"] == "bind"}
    assert binds["/lib/modules"]["options"] == ["rw", "rbind", "rshared"]
    assert binds["/etc"]["options"] == ["ro", "rbind"]
    assert yaml_wins.readonly is False and yaml_wins.config["hostname"] == "from-yaml"
    assert {"type": "pid"} in yaml_wins.config["linux"]["namespaces"]

    replaced = render_runtime_bundle(
        entry(capabilities=("CAP_CHOWN",), binds=()), IMAGE, lab, volumes=()
    )
    assert replaced.config["process"]["capabilities"]["effective"] == ["CAP_CHOWN"]
    assert not [m for m in replaced.config["mounts"] if m["type"] == "bind"]


def test_capabilities_all_none_and_ambient() -> None:
    caps = render_runtime_bundle(entry(capabilities=("all",)), IMAGE, None, volumes=())
    process_caps = caps.config["process"]["capabilities"]
    assert process_caps["bounding"] == sorted(CAPABILITIES) and len(CAPABILITIES) == 41
    assert process_caps["effective"] == list(CAPABILITIES)
    none = render_runtime_bundle(entry(capabilities=("none",)), IMAGE, None, volumes=())
    assert none.config["process"]["capabilities"] == {}
    ambient = render_runtime_bundle(
        entry(capabilities=("CAP_NET_RAW",), ambient=("CAP_NET_BIND_SERVICE",)),
        IMAGE,
        None,
        volumes=(),
    )
    got = ambient.config["process"]["capabilities"]
    assert got == {
        "bounding": ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
        "effective": ["CAP_NET_RAW"],
        "inheritable": ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
        "permitted": ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"net": "new"}, [{"type": "network"}, {"type": "pid"}]),
        ({"net": "none"}, [{"type": "network"}, {"type": "pid"}]),
        ({"net": "/run/netns/x", "pid": "host"}, [{"type": "network", "path": "/run/netns/x"}]),
        (
            {"ipc": "new", "uts": "new", "userns": "new", "pid": "root"},
            [{"type": "ipc"}, {"type": "uts"}, {"type": "user"}],
        ),
        ({"net": "host", "ipc": "root", "uts": "host", "userns": "host"}, [{"type": "pid"}]),
    ],
)
def test_namespaces(fields: dict[str, str], expected: list[dict[str, str]]) -> None:
    bundle = render_runtime_bundle(entry(**fields), IMAGE, None, volumes=())
    assert bundle.config["linux"]["namespaces"] == [
        *expected,
        {"type": "mount"},
        {"type": "cgroup"},
    ]


def test_mounts_later_kind_wins_for_a_destination_and_the_list_is_sorted() -> None:
    lab = label(
        '{"mounts": [{"source": "mqueue"}, {"type": "bind", "source": "/a",'
        ' "destination": "/srv", "options": ["rbind"]}]}'
    )
    bundle = render_runtime_bundle(
        entry(tmpfs=("/srv:size=1m", "/tmp"), binds=("/data:/srv",)), IMAGE, lab, volumes=()
    )
    mounts = bundle.config["mounts"]
    assert [m["destination"] for m in mounts] == sorted(m["destination"] for m in mounts)
    by_dest = {m["destination"]: m for m in mounts}
    assert by_dest["/srv"] == {
        "destination": "/srv",
        "type": "bind",
        "source": "/a",
        "options": ["rbind"],
    }
    assert by_dest["/dev/mqueue"] == {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
    }
    assert by_dest["/tmp"] == {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}


def test_volume_binds() -> None:
    volumes = (VolumeSpec("data"), VolumeSpec("assets", readonly=True))
    bundle = render_runtime_bundle(
        entry(binds=("data:/var/lib/data", "assets:/srv:ro")), IMAGE, None, volumes=volumes
    )
    by_dest = {m["destination"]: m for m in bundle.config["mounts"]}
    assert by_dest["/var/lib/data"]["source"] == "/containers/volumes/data"
    assert by_dest["/srv"] == {
        "destination": "/srv",
        "type": "bind",
        "source": "/containers/volumes/assets",
        "options": ["ro", "rbind"],
    }
    as_mapping = render_runtime_bundle(
        entry(binds=("data:/var/lib/data", "assets:/srv:ro")),
        IMAGE,
        None,
        volumes={v.name: v for v in volumes},
    )
    assert as_mapping == bundle
    with pytest.raises(RuntimeConfigError, match="read-write bind of read-only volume"):
        render_runtime_bundle(entry(), IMAGE, label('{"binds": ["assets:/srv"]}'), volumes=volumes)
    with pytest.raises(RuntimeConfigError, match="not a declared volume"):
        render_runtime_bundle(entry(), IMAGE, label('{"binds": ["cache:/c"]}'), volumes=())


def test_ids_by_number_name_and_image_user() -> None:
    spec = ImageSpec(
        onboot=(entry(name="dhcpcd"),), services=(entry(name="web"), entry(name="sshd"))
    )
    ids = assign_container_ids(spec)
    assert ids == {"dhcpcd": 100, "web": 101, "sshd": 102}
    named = render_runtime_bundle(
        entry(uid="sshd", gid="root", additional_gids=(5, "dhcpcd")),
        IMAGE,
        None,
        volumes=(),
        id_map=ids,
    )
    assert named.config["process"]["user"] == {"uid": 102, "gid": 0, "additionalGids": [5, 100]}
    with pytest.raises(RuntimeConfigError, match="unknown id name 'sshd'"):
        render_runtime_bundle(entry(uid="sshd"), IMAGE, None, volumes=())
    image_user = render_runtime_bundle(entry(), {**IMAGE, "User": "1000:1001"}, None, volumes=())
    assert image_user.config["process"]["user"] == {"uid": 1000, "gid": 1001}
    yaml_user = render_runtime_bundle(
        entry(uid=7), {**IMAGE, "User": "1000:1001"}, None, volumes=()
    )
    assert yaml_user.config["process"]["user"] == {"uid": 7, "gid": 1001}


def test_devices_rlimits_and_linux_fields() -> None:
    lab = label(
        json.dumps(
            {
                "devices": [
                    {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "mode": "0666"},
                    {"path": "all", "type": "b"},
                ],
                "rlimits": ["nofile,1024,unlimited", "RLIMIT_NPROC,10,20"],
                "resources": {"memory": {"limit": 1048576}},
                "oomScoreAdj": -500,
                "noNewPrivileges": True,
                "cgroupsPath": "/sys/web",
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"],
                "rootfsPropagation": "rslave",
                "annotations": {"a": "b"},
                "uidMappings": [{"hostID": 1000, "containerID": 0, "size": 1}],
                "runtime": {
                    "mkdir": ["/var/web"],
                    "bindNS": {"net": "/run/netns/web"},
                    "interfaces": [{"name": "eth1", "add": "veth", "peer": "p"}],
                },
            }
        )
    )
    bundle = render_runtime_bundle(entry(), IMAGE, lab, volumes=())
    linux = bundle.config["linux"]
    assert linux["devices"] == [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666}
    ]
    assert linux["resources"] == {
        "memory": {"limit": 1048576},
        "devices": [
            {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
            {"allow": True, "type": "b", "access": "rwm"},
        ],
    }
    assert linux["cgroupsPath"] == "/sys/web"
    assert linux["maskedPaths"] == ["/proc/kcore"] and linux["readonlyPaths"] == ["/proc/sys"]
    assert linux["rootfsPropagation"] == "rslave"
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]
    process = bundle.config["process"]
    assert process["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2**64 - 1},
        {"type": "RLIMIT_NPROC", "soft": 10, "hard": 20},
    ]
    assert process["oomScoreAdj"] == -500 and process["noNewPrivileges"] is True
    assert bundle.config["annotations"] == {"a": "b"}
    assert bundle.runtime["mkdir"] == ["/var/web"]
    assert bundle.runtime["bindNS"]["net"] == "/run/netns/web"
    assert bundle.runtime["interfaces"] == [
        {"name": "eth1", "add": "veth", "peer": "p", "createInRoot": False}
    ]
    again = render_runtime_bundle(entry(), IMAGE, lab, volumes=())
    assert json.dumps(again.config, sort_keys=True) == json.dumps(bundle.config, sort_keys=True)


def test_each_role_gets_its_own_cgroup() -> None:
    onboot = render_runtime_bundle(entry(name="dhcpcd"), IMAGE, None, volumes=(), role="onboot")
    service = render_runtime_bundle(entry(name="dhcpcd"), IMAGE, None, volumes=())
    assert onboot.config["linux"]["cgroupsPath"] == "/provision/onboot/dhcpcd"
    assert service.config["linux"]["cgroupsPath"] == "/provision/services/dhcpcd"
    assert {"type": "cgroup"} in service.config["linux"]["namespaces"]


def test_labels_are_checked_like_yaml_with_located_problems() -> None:
    assert label("") == ImageConfig()
    assert label('{"capabilities": ["CAP_SYS_ADMIN"], "net": "host"}').net == "host"
    with pytest.raises(SpecError) as caught:
        label('{\n  "name": "x",\n  "capabilities": ["CAP_SYS_ADMN"],\n  "pid": 3\n}')
    assert [str(p) for p in caught.value.problems] == [
        "web:1 label org.mobyproject.config:2:3: name: name cannot be set in the "
        "org.mobyproject.config label",
        "web:1 label org.mobyproject.config:3:20: capabilities[0]: unknown capability "
        "'CAP_SYS_ADMN' (did you mean CAP_SYS_ADMIN?)",
        "web:1 label org.mobyproject.config:4:10: pid: must be a string, not an integer (3)",
    ]
    with pytest.raises(SpecError, match="must be a mapping"):
        label('["not", "an", "object"]')
