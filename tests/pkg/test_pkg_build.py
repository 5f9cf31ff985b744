"""provision pkg lock / build / tag on a real Debian package (busybox-static) through the
host's apt, and on hand-made packages in a local repository given with --sources."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from cli_testkit import run_provision
from pkg_testkit import LocalRepo, locked, make_deb, replace_data, write_recipe

from provision.builders.pkg import (
    Apt,
    ElfClosureError,
    build_recipe,
    load_recipe,
    lock_recipe,
    read_lock,
    write_lock,
)
from provision.errors import DigestMismatchError, HostileInputError, ProvisionError
from provision.oci.store import ImageStore

BUSYBOX = """\
name: tiny
packages: [busybox-static]
keep:
  busybox-static: [/bin/busybox]
files:
  - {source: files/hello, path: /usr/bin/hello, mode: "0755"}
  - {path: /etc/hostname, contents: "tiny\\n"}
symlinks: {/bin/sh: busybox}
directories: [/proc, /tmp]
config: {Entrypoint: [/usr/bin/hello], Env: [PATH=/bin]}
label: {capabilities: [CAP_NET_ADMIN], binds: ["/run:/run"], net: host}
elf_closure: true
"""


def layer_members(store: ImageStore, name: str) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    image = store.resolve(name)
    assert len(image.layers) == 1
    with store.open_layer(image.layers[0]) as handle, tarfile.open(fileobj=handle) as tar:
        return {
            m.name: (m, tar.extractfile(m).read() if m.isreg() else b"")  # type: ignore[union-attr]
            for m in tar
        }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_provision(*args)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, deb_cache: Path) -> tuple[Path, Path, str]:
    """The busybox recipe locked with the host's apt and built: (recipe dir, store, output)."""
    base = tmp_path_factory.mktemp("tiny")
    recipe = write_recipe(base / "tiny", BUSYBOX, {"files/hello": "#!/bin/sh\necho hi\n"})
    locked_run = cli("pkg", "lock", str(recipe))
    assert locked_run.returncode == 0, locked_run.stderr
    store = base / "store"
    built = cli("pkg", "build", str(recipe), "--cache", str(store), "--debs", str(deb_cache), "-q")
    assert built.returncode == 0, built.stderr
    return recipe, store, built.stdout


def test_lock_records_what_apt_index_says(tiny: tuple[Path, Path, str], host_apt: Apt) -> None:
    recipe, _store, _out = tiny
    lock = read_lock(recipe / "lock.yml")
    (package,) = lock.packages
    shown = subprocess.run(["apt-cache", "show", f"busybox-static={package.version}"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"SHA256: {package.sha256}" in shown
    assert f"Filename: {package.filename}" in shown
    assert host_apt.candidate("busybox-static") == package.version
    # nothing in the lock names a host
    assert "://" not in (recipe / "lock.yml").read_text()


def test_build_writes_the_recipe_as_an_image(tiny: tuple[Path, Path, str]) -> None:
    recipe, store_dir, out = tiny
    tag = cli("pkg", "tag", str(recipe)).stdout.strip()
    assert tag.startswith("provision/tiny:") and len(tag.split(":")[1]) == 12
    name, digest = out.split()
    assert name == tag and digest.startswith("sha256:")
    store = ImageStore(store_dir)
    members = layer_members(store, tag)
    busybox, data = members["bin/busybox"]
    assert busybox.mode == 0o755 and data.startswith(b"\x7fELF") and busybox.uid == 0
    assert members["bin/sh"][0].issym() and members["bin/sh"][0].linkname == "busybox"
    assert members["usr/bin/hello"][0].mode == 0o755
    assert members["usr/bin/hello"][1] == b"#!/bin/sh\necho hi\n"
    assert members["etc/hostname"][1] == b"tiny\n"
    assert members["proc"][0].isdir() and members["tmp"][0].isdir()
    # only what keep: asked for (no docs, no /usr/share)
    assert not any(n.startswith("usr/share") for n in members)
    assert all(m.mtime == 0 for m, _ in members.values())
    config = store.resolve(tag).config
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"]["Entrypoint"] == ["/usr/bin/hello"]
    label = json.loads(config["config"]["Labels"]["org.mobyproject.config"])
    assert label == {"capabilities": ["CAP_NET_ADMIN"], "binds": ["/run:/run"], "net": "host"}
    # the moving dev alias points at the same image
    assert store.resolve("provision/tiny:dev").digest == digest


def test_same_recipe_and_lock_give_the_same_digest(
    tiny: tuple[Path, Path, str], tmp_path: Path, deb_cache: Path, host_apt: Apt
) -> None:
    recipe_dir, _store, out = tiny
    copy = tmp_path / "elsewhere" / "tiny"
    copy.parent.mkdir()
    subprocess.run(["cp", "-r", str(recipe_dir), str(copy)], check=True)
    result = build_recipe(load_recipe(copy), ImageStore(tmp_path / "other"), host_apt, deb_cache)
    assert result.digest == out.split()[1]
    assert result.name == out.split()[0]


def test_changing_the_recipe_changes_the_tag(tiny: tuple[Path, Path, str], tmp_path: Path) -> None:
    recipe_dir, _store, out = tiny
    copy = tmp_path / "tiny"
    subprocess.run(["cp", "-r", str(recipe_dir), str(copy)], check=True)
    (copy / "files" / "hello").write_text("#!/bin/sh\necho changed\n")
    assert cli("pkg", "tag", str(copy)).stdout.strip() != out.split()[0]


def test_tampered_deb_is_refused(
    tiny: tuple[Path, Path, str], tmp_path: Path, deb_cache: Path, host_apt: Apt
) -> None:
    recipe = load_recipe(tiny[0])
    package = read_lock(recipe.lock_file).packages[0]
    cache = tmp_path / "debs"
    cache.mkdir()
    data = bytearray((deb_cache / package.deb_name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (cache / package.deb_name).write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError, match="is not the locked"):
        build_recipe(recipe, ImageStore(tmp_path / "store"), host_apt, cache)
    assert (
        not (tmp_path / "store" / "index.json").exists()
        or not ImageStore(tmp_path / "store").list_images()
    )


def test_lock_disagreeing_with_apt_index_is_refused(
    tiny: tuple[Path, Path, str], tmp_path: Path, host_apt: Apt
) -> None:
    copy = tmp_path / "tiny"
    subprocess.run(["cp", "-r", str(tiny[0]), str(copy)], check=True)
    text = (copy / "lock.yml").read_text()
    sha = read_lock(copy / "lock.yml").packages[0].sha256
    (copy / "lock.yml").write_text(text.replace(sha, "f" * 64))
    with pytest.raises(DigestMismatchError, match="apt's index says"):
        build_recipe(load_recipe(copy), ImageStore(tmp_path / "s"), host_apt, tmp_path / "debs")


def test_missing_lock_is_an_error_with_a_hint(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "nolock", "name: nolock\npackages: [busybox-static]\n")
    done = cli("pkg", "build", str(recipe), "--cache", str(tmp_path / "s"))
    assert done.returncode == 1
    assert "no lock file" in done.stderr and f"provision pkg lock {recipe}" in done.stderr


def test_stale_lock_is_an_error(
    tiny: tuple[Path, Path, str], tmp_path: Path, host_apt: Apt
) -> None:
    copy = tmp_path / "tiny"
    subprocess.run(["cp", "-r", str(tiny[0]), str(copy)], check=True)
    text = (copy / "build.yml").read_text().replace("[busybox-static]", "[busybox-static, runc]")
    (copy / "build.yml").write_text(text)
    with pytest.raises(ProvisionError, match="out of date: it lacks runc"):
        build_recipe(load_recipe(copy), ImageStore(tmp_path / "s"), host_apt, tmp_path / "d")


# ------------------------------------------------------------------ local repository
def test_custom_sources_elf_closure_reports_missing_libraries(
    local_repo: LocalRepo, tmp_path: Path
) -> None:
    true = Path("/bin/true").read_bytes()  # dynamically linked against libc.so.6
    make_deb(local_repo.directory, "tool", {"/usr/bin/tool": true, "/usr/share/doc/x": b"doc"})
    apt = local_repo.publish()
    recipe_dir = write_recipe(
        tmp_path / "tool", "name: tool\npackages: [tool]\nelf_closure: true\n"
    )
    recipe = locked(recipe_dir, apt)
    assert read_lock(recipe.lock_file).packages[0].filename == "./tool_1.0_amd64.deb"
    with pytest.raises(ElfClosureError) as caught:
        build_recipe(recipe, ImageStore(tmp_path / "s"), apt, tmp_path / "debs")
    message = str(caught.value)
    assert "/usr/bin/tool: needs libc.so.6" in message
    assert "interpreter /lib64/ld-linux-x86-64.so.2" in message
    assert "libc6" in (caught.value.hint or "")  # which package ships it, as a hint


def test_custom_sources_elf_closure_passes_with_the_libraries(
    local_repo: LocalRepo, tmp_path: Path
) -> None:
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6").resolve().read_bytes()
    loader = Path("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").resolve().read_bytes()
    make_deb(local_repo.directory, "tool", {"/usr/bin/tool": Path("/bin/true").read_bytes()})
    make_deb(local_repo.directory, "minilibc", {
        "/lib/x86_64-linux-gnu/libc.so.6": libc,
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": loader,
        "/lib64/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    })  # fmt: skip
    apt = local_repo.publish()
    recipe_dir = write_recipe(tmp_path / "tool", (
        "name: tool\npackages: [tool, minilibc]\nelf_closure: true\n"
        "keep: {tool: [/usr/bin/*]}\n"
    ))  # fmt: skip
    recipe = locked(recipe_dir, apt)
    store = ImageStore(tmp_path / "s")
    result = build_recipe(recipe, store, apt, tmp_path / "debs")
    members = layer_members(store, result.name)
    assert members["lib64/ld-linux-x86-64.so.2"][0].linkname.endswith("ld-linux-x86-64.so.2")
    assert "usr/bin/tool" in members


def test_elf_closure_resolve_adds_library_packages_to_the_lock(
    local_repo: LocalRepo, tmp_path: Path
) -> None:
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6").resolve().read_bytes()
    loader = Path("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").resolve().read_bytes()
    make_deb(local_repo.directory, "tool", {"/usr/bin/tool": Path("/bin/true").read_bytes()},
             depends="helper, minilibc (>= 1.0)")  # fmt: skip
    make_deb(local_repo.directory, "helper", {"/usr/bin/helper": b"#!/bin/sh\n"})
    make_deb(local_repo.directory, "minilibc", {
        "/lib/x86_64-linux-gnu/libc-2.36.so": libc,
        "/lib/x86_64-linux-gnu/libc.so.6": "libc-2.36.so",
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": loader,
        "/lib64/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/usr/share/doc/minilibc/README": b"not needed",
    }, section="libs")  # fmt: skip
    apt = local_repo.publish()
    recipe_dir = write_recipe(
        tmp_path / "tool", "name: tool\npackages: [tool]\nelf_closure: resolve\n"
    )
    recipe = load_recipe(recipe_dir)
    write_lock(recipe.lock_file, lock_recipe(recipe, apt, tmp_path / "debs"))
    lock = read_lock(recipe.lock_file)
    assert sorted(p.name for p in lock.packages) == ["minilibc", "tool"]  # helper is no library
    assert lock.libraries == (("minilibc", (
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc-2.36.so",
        "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2",
    )),)  # fmt: skip
    store = ImageStore(tmp_path / "s")
    members = layer_members(store, build_recipe(recipe, store, apt, tmp_path / "debs").name)
    assert "lib/x86_64-linux-gnu/libc-2.36.so" in members
    assert not any("doc" in name for name in members)


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("./../../etc/evil"),
        tarfile.TarInfo("./usr/../../evil"),
    ],
)
def test_hostile_deb_paths_are_refused(
    local_repo: LocalRepo, tmp_path: Path, member: tarfile.TarInfo
) -> None:
    deb = make_deb(local_repo.directory, "evil", {"/usr/bin/ok": b"fine"})
    member.size = 4
    replace_data(deb, [tarfile.TarInfo("./usr"), member])
    apt = local_repo.publish()
    recipe = locked(write_recipe(tmp_path / "evil", "name: evil\npackages: [evil]\n"), apt)
    with pytest.raises(HostileInputError, match="leaves the package root"):
        build_recipe(recipe, ImageStore(tmp_path / "s"), apt, tmp_path / "debs")
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "evil").exists()


def test_hostile_hardlink_and_device_are_refused(local_repo: LocalRepo, tmp_path: Path) -> None:
    deb = make_deb(local_repo.directory, "evil", {"/usr/bin/ok": b"fine"})
    link = tarfile.TarInfo("./usr/bin/shadow")
    link.type, link.linkname = tarfile.LNKTYPE, "../../etc/shadow"
    replace_data(deb, [link])
    apt = local_repo.publish()
    recipe = locked(write_recipe(tmp_path / "evil", "name: evil\npackages: [evil]\n"), apt)
    with pytest.raises(HostileInputError, match="hard link"):
        build_recipe(recipe, ImageStore(tmp_path / "s"), apt, tmp_path / "debs")
    device = tarfile.TarInfo("./dev/sda")
    device.type, device.devmajor = tarfile.BLKTYPE, 8
    replace_data(deb, [device])
    apt = local_repo.publish()
    recipe = locked(recipe.directory, apt)
    with pytest.raises(HostileInputError, match="device node"):
        build_recipe(recipe, ImageStore(tmp_path / "s"), apt, tmp_path / "debs2")


def test_keep_glob_matching_nothing_is_an_error(local_repo: LocalRepo, tmp_path: Path) -> None:
    make_deb(local_repo.directory, "tool", {"/usr/bin/tool": b"#!/bin/sh\n"})
    apt = local_repo.publish()
    recipe = locked(write_recipe(tmp_path / "t", (
        "name: t\npackages: [tool]\nkeep: {tool: [/usr/bin/tool, /usr/bin/typo]}\n"
    )), apt)  # fmt: skip
    with pytest.raises(ProvisionError, match="/usr/bin/typo match nothing"):
        build_recipe(recipe, ImageStore(tmp_path / "s"), apt, tmp_path / "debs")


def test_lock_cli_check_and_sources_option(local_repo: LocalRepo, tmp_path: Path) -> None:
    make_deb(local_repo.directory, "tool", {"/usr/bin/tool": b"#!/bin/sh\n"})
    local_repo.publish()
    recipe = write_recipe(tmp_path / "t", "name: t\npackages: [tool]\n")
    args = ["--sources", str(local_repo.sources)]
    assert cli("pkg", "lock", str(recipe), "--check", *args).returncode == 1
    assert cli("pkg", "lock", str(recipe), *args).returncode == 0
    data = yaml.safe_load((recipe / "lock.yml").read_text())
    assert data["packages"]["tool"]["version"] == "1.0"
    assert cli("pkg", "lock", str(recipe), "--check", *args).returncode == 0
    again = lock_recipe(load_recipe(recipe), Apt(local_repo.publish().config))
    write_lock(recipe / "lock.yml", again)
    assert yaml.safe_load((recipe / "lock.yml").read_text()) == data


def test_layer_is_a_plain_tar(tiny: tuple[Path, Path, str]) -> None:
    store = ImageStore(tiny[1])
    image = store.resolve(tiny[2].split()[0])
    with store.open_layer(image.layers[0]) as handle, tarfile.open(fileobj=handle) as tar:
        names = tar.getnames()
    assert names == sorted(names, key=lambda n: n.split("/"))


@pytest.mark.registry
def test_build_push_sends_the_image_to_a_registry(
    tiny: tuple[Path, Path, str], tmp_path: Path, deb_cache: Path
) -> None:
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {tmp_path}/data}}}}\n"
                      f"http: {{addr: 127.0.0.1:{port}}}\n")  # fmt: skip
    process = subprocess.Popen(["docker-registry", "serve", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        done = cli("pkg", "build", str(tiny[0]), "--cache", str(tmp_path / "s"), "--debs",
                   str(deb_cache), "-q", "--push", f"127.0.0.1:{port}/components")  # fmt: skip
        assert done.returncode == 0, done.stderr
        name, digest = done.stdout.splitlines()[0].split()
        tag = name.split(":")[1]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/components/tiny/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Docker-Content-Digest"] == digest
    finally:
        process.terminate()
        process.wait(timeout=10)
