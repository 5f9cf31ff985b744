"""Fast checks of the component recipes and examples (no VM): recipes are complete,
scripts parse, labels stay in LinuxKit's image-entry schema, and the examples reference
the components' current tags."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("init", "runc", "getty", "dhcpcd", "sshd", "metadata", "sysctl", "agent")
EXAMPLES = ("minimal", "sshd", "web")
RECIPE_KEYS = {"name", "packages", "keep", "files", "symlinks", "directories", "config",
               "label", "elf_closure"}  # fmt: skip
LABEL_KEYS = {"capabilities", "binds", "binds.add", "tmpfs", "net", "pid", "ipc", "uts",
              "readonly", "devices", "mounts", "rootfsPropagation", "command", "env"}  # fmt: skip


def recipe(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "pkg" / name / "build.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.parametrize("name", COMPONENTS)
def test_recipe_is_complete(name: str) -> None:
    r = recipe(name)
    assert r["name"] == name
    assert set(r) <= RECIPE_KEYS, set(r) - RECIPE_KEYS
    packages = r["packages"]
    keep = r["keep"]
    assert isinstance(packages, list) and isinstance(keep, dict)
    assert set(keep) == set(packages), "every package keeps something, nothing else is kept"
    for entry in r.get("files", []):
        assert entry["path"].startswith("/")
        assert ("source" in entry) != ("contents" in entry)
        if "source" in entry:
            assert (REPO / "pkg" / name / entry["source"]).is_file(), entry["source"]
    label = r.get("label", {})
    assert isinstance(label, dict) and set(label) <= LABEL_KEYS, label
    for cap in label.get("capabilities", []):
        assert cap in ("all", "none") or re.fullmatch(r"CAP_[A-Z_]+", cap), cap


@pytest.mark.parametrize("name", [n for n in COMPONENTS if n not in ("init", "runc")])
def test_service_entrypoint_is_shipped(name: str) -> None:
    r = recipe(name)
    entrypoint = r["config"]["Entrypoint"][0]
    shipped = {f["path"] for f in r["files"]} | set(r.get("symlinks", {}))
    assert entrypoint in shipped


def shell_scripts() -> list[Path]:
    found = []
    for path in sorted((REPO / "pkg").glob("*/files/*")):
        if path.parent.parent.name in COMPONENTS and path.read_bytes().startswith(b"#!/bin/sh"):
            found.append(path)
    found.append(REPO / "pkg/init/files/lib.sh")
    return found


@pytest.mark.parametrize(
    "script", shell_scripts(), ids=lambda p: f"{p.parent.parent.name}/{p.name}"
)
def test_scripts_parse_with_busybox_sh(script: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox-static is needed (apt-get install busybox-static)")
    done = subprocess.run([busybox, "sh", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def example_refs(example: str) -> list[str]:
    return spec_refs(REPO / "examples" / f"{example}.yml")


def spec_refs(path: Path) -> list[str]:
    spec = yaml.safe_load(path.read_text())
    refs = [spec["kernel"]["image"]] if "kernel" in spec else []
    refs += spec.get("init") or []
    for kind in ("onboot", "services", "onshutdown"):
        refs += [entry["image"] for entry in spec.get(kind) or []]
    return refs


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_use_only_provision_components(example: str) -> None:
    for ref in example_refs(example):
        match = re.fullmatch(r"provision/([a-z0-9-]+):([\w.-]+)", ref)
        assert match, f"{example}: {ref} is not a provision component"
        assert (REPO / "pkg" / match.group(1) / "build.yml").is_file(), ref


def current_tag(name: str) -> str:
    """The tag `provision pkg tag pkg/NAME` gives the component now."""
    done = subprocess.run([sys.executable, "-m", "provision", "pkg", "tag", f"pkg/{name}"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().rsplit(":", 1)[-1]


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_reference_the_current_tags(example: str) -> None:
    for ref in example_refs(example):
        name, tag = ref.removeprefix("provision/").split(":")
        current = current_tag(name)
        assert tag == current, f"{example}: {ref} but pkg/{name} is now {current}"


@pytest.mark.parametrize(
    "spec", sorted((REPO / "tests/boot/specs").glob("*.yml")), ids=lambda p: p.name
)
def test_boot_test_specs_reference_the_current_tags(spec: Path) -> None:
    for ref in spec_refs(spec):
        name, tag = ref.removeprefix("provision/").split(":")
        current = current_tag(name)
        assert tag == current, f"{spec.name}: {ref} but pkg/{name} is now {current}"


def expand_user_data(
    tmp_path: Path, user_data: str
) -> tuple[int, list[list[str]], dict[str, bytes]]:
    """Run metadata's expand.awk (host busybox): exit status, records, file contents."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is needed (apt-get install busybox-static)"
    work = tmp_path / "content"
    work.mkdir(exist_ok=True)
    (tmp_path / "user-data").write_text(user_data)
    done = subprocess.run([busybox, "awk", "-v", f"WORK={work}", "-f",
                           str(REPO / "pkg/metadata/files/expand.awk"), str(tmp_path / "user-data")],
                          capture_output=True)  # fmt: skip
    records = [line.split("\t") for line in done.stdout.decode().splitlines()]
    return done.returncode, records, {p.name: p.read_bytes() for p in work.iterdir()}


def test_metadata_expands_json_user_data_like_linuxkit(tmp_path: Path) -> None:
    user_data = r"""{"ssh": {"entries": {"authorized_keys": {"content": "k1\n\"q\" \\ \/ \u00e9\ud83d\ude00",
      "perm": "0600"}}}, "agent": {"entries": {}}, "bad/name": {"content": "x"},
      "..": {"entries": {"x": {"content": "y"}}}, "num": {"content": 42}, "no": {"content": false},
      "plain": "not an object", "d": {"perm": "0700", "entries": {"e": {}}}}"""
    code, records, files = expand_user_data(tmp_path, user_data)
    assert code == 0
    assert records == [["f", "0600", "/ssh/authorized_keys", "1"], ["d", "0755", "/ssh"],
                       ["d", "0755", "/agent"], ["f", "0644", "/num", "2"], ["f", "0644", "/no", "3"],
                       ["f", "0644", "/d/e", "4"], ["d", "0700", "/d"]]  # fmt: skip
    assert files == {"1": 'k1\n"q" \\ / \u00e9\U0001f600'.encode(), "2": b"42", "3": b"", "4": b""}


@pytest.mark.parametrize(
    "user_data", ["[1, 2]", "plain text", '{"a": {"content": "x"', '{"a": 1} tail']
)
def test_metadata_leaves_what_is_not_a_json_object_to_userdata(
    tmp_path: Path, user_data: str
) -> None:
    code, records, _ = expand_user_data(tmp_path, user_data)
    assert code == 1 and records == []


def test_udhcpc_up_copies_stay_one_script() -> None:
    # a recipe's files come from its own directory: init and metadata each carry a copy
    init, metadata = (REPO / f"pkg/{name}/files/udhcpc-up" for name in ("init", "metadata"))
    assert init.read_bytes() == metadata.read_bytes()


def iso_labels(tmp_path: Path, devices: list[Path]) -> list[str]:
    """metadata's iso_label over each file (host busybox): the volume id, or "-" for none."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is needed (apt-get install busybox-static)"
    script = (REPO / "pkg/metadata/files/metadata").read_text()
    function = re.search(r"^iso_label\(\) \{\n.*?^\}\n", script, re.M | re.S)
    assert function, "pkg/metadata/files/metadata has no iso_label function"
    probe = tmp_path / "probe.sh"
    probe.write_text(
        function.group(0) + 'for dev; do iso_label "$dev" && echo "$ISO_LABEL" || echo -; done\n'
    )
    done = subprocess.run([busybox, "sh", str(probe), *map(str, devices)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return done.stdout.splitlines()


def test_metadata_reads_the_iso_volume_id(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "user-data").write_text("{}\n")
    images = []
    for name, label, joliet in (("lower", "cidata", "-J"), ("upper", "CIDATA", "-r"),
                                ("spaced", "MY DISC", "-r")):  # fmt: skip
        images.append(tmp_path / f"{name}.iso")
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", label, joliet, "-o",
                        str(images[-1]), str(tree)], check=True, capture_output=True)  # fmt: skip
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * 65536)
    short = tmp_path / "short.img"
    short.write_bytes(b"x" * 100)
    labels = iso_labels(tmp_path, [*images, blank, short, tmp_path / "missing"])
    assert labels == ["cidata", "CIDATA", "MY DISC", "-", "-", "-"]


def test_init_names_containers_by_their_bundle_without_the_order_prefix() -> None:
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is needed (apt-get install busybox-static)"
    bundles = ["/containers/onboot/000-sysctl", "/containers/onboot/012-a-b/", "/x/007",
               "/containers/services/web", "/x/1x-y", "/x/-z"]  # fmt: skip
    script = '. pkg/init/files/lib.sh; for b; do container_id "$b"; echo "$CONTAINER_ID"; done'
    done = subprocess.run([busybox, "sh", "-c", script, "sh", *bundles], cwd=REPO,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.splitlines() == ["sysctl", "a-b", "007", "web", "1x-y", "-z"]


@pytest.mark.parametrize(("runtime", "sets"), [
    ('{\n  "bindNS": {\n    "net": ""\n  },\n  "cgroups": [],\n  "mounts": [],\n  "namespace": ""\n}', False),
    ('{"interfaces": [], "mkdir": [ ], "bindNS": {}}', False),
    ('{\n  "mkdir": [\n    "x"\n  ]\n}', True),
    ('{"mkdir": ["x"]}', True),
    ('{"bindNS": {"net":"/run/netns/lab"}}', True),
    ('{"namespace": "", "x": {  "y": 1}}', True),
    ('{"a": "" , "b": "c"}', True),
])  # fmt: skip
def test_init_applies_runtime_json_only_when_it_sets_something(runtime: str, sets: bool,
                                                               tmp_path: Path) -> None:  # fmt: skip
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is needed (apt-get install busybox-static)"
    (tmp_path / "runtime.json").write_text(runtime)
    script = '. pkg/init/files/lib.sh; runtime_sets_something <"$1"'
    done = subprocess.run([busybox, "sh", "-c", script, "sh", str(tmp_path / "runtime.json")],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == (0 if sets else 1), done.stderr
