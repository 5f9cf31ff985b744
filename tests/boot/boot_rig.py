"""How the boot tests and benches get images. `build_with_provision` runs the real
pipeline (`provision pkg build`, `provision build`); the boot tests use it.

The rest is a small stand-in for `provision pkg build` + `provision build` (written before
those landed, kept for bench/size_report.py's hard-link comparison):
assemble the components of pkg/ from Debian packages (downloaded with the host's apt
configuration and cached), lay out a rootfs as provision/assemble/root.py describes (init images in /,
containers/onboot/NNN-name, containers/services/name with config.json + rootfs/), and
write a gzip newc initrd. The kernel and its modules are the host's cloud kernel.

It reads the real recipes (pkg/NAME/build.yml) and the real example specs, so a broken
recipe, init script or example breaks the boot tests.
"""

from __future__ import annotations

import fcntl
import fnmatch
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "pkg"
KERNEL_VERSION = "6.1.0-56-cloud-amd64"
CACHE = Path(os.environ.get("PROVISION_TEST_CACHE", "/var/tmp/provision-boot-cache"))

ALL_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]
DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout


# ------------------------------------------------------------------ packages
def fetch_package(name: str) -> Path:
    """Download and unpack Debian package ``name`` once; return the unpacked tree."""
    tree = CACHE / "tree" / name
    if tree.is_dir():
        return tree
    (CACHE / "deb").mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tree.is_dir():
            return tree
        workdir = CACHE / "deb" / name
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
        _run(["apt-get", "download", "-q", name], cwd=workdir)
        (deb,) = workdir.glob("*.deb")
        partial = CACHE / "tree" / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(partial)])
        partial.rename(tree)
    return tree


def _walk(tree: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in sorted(filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]):
            yield "/" + os.path.relpath(os.path.join(dirpath, name), tree)


def _copy_entry(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    if src.is_symlink():
        os.symlink(os.readlink(src), dest)
    else:
        shutil.copy2(src, dest)


def _elf_closure(root: Path) -> None:
    """Add the shared libraries the ELF files of ``root`` need (resolved like the host)."""
    needed: set[str] = set()
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        if path.open("rb").read(4) != b"\x7fELF":
            continue
        env = dict(
            os.environ,
            LD_LIBRARY_PATH=f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu",
        )
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env).stdout
        for line in out.splitlines():
            parts = line.split("=>")
            if len(parts) == 2 and parts[1].strip().startswith("/"):
                needed.add(parts[1].split("(")[0].strip())
            elif line.strip().startswith("/lib64/ld-linux"):
                needed.add(line.split("(")[0].strip())
    for lib in sorted(needed):
        if lib.startswith(str(root)):
            continue
        real = Path(lib)
        rel = lib.lstrip("/")
        if rel.startswith("usr/lib/x86_64-linux-gnu/") or rel.startswith("lib/x86_64-linux-gnu/"):
            rel = "lib/x86_64-linux-gnu/" + real.name
        _copy_entry(real.resolve(), root / rel)


def load_recipe(name: str) -> dict[str, Any]:
    recipe = yaml.safe_load((PKG / name / "build.yml").read_text())
    assert isinstance(recipe, dict) and recipe.get("name") == name
    return recipe


def assemble_component(name: str) -> Path:
    """The root filesystem of component ``name`` (cached per recipe content)."""
    recipe_dir = PKG / name
    digest = hashlib.sha256()
    for path in sorted(recipe_dir.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(recipe_dir)).encode() + b"\0" + path.read_bytes())
    out = CACHE / "component" / f"{name}-{digest.hexdigest()[:16]}"
    if out.is_dir():
        return out
    recipe = load_recipe(name)
    partial = out.with_name(out.name + f".{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for package in recipe.get("packages", []):
        tree = fetch_package(package)
        globs = recipe.get("keep", {}).get(package)
        assert globs, f"pkg/{name}: package {package} keeps nothing"
        for glob in globs:
            matches = [p for p in _walk(tree) if fnmatch.fnmatchcase(p, glob)]
            assert matches, f"pkg/{name}: keep glob {glob} matches nothing in {package}"
            for rel in matches:
                _copy_entry(tree / rel.lstrip("/"), partial / rel.lstrip("/"))
    for directory in recipe.get("directories", []):
        (partial / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for entry in recipe.get("files", []):
        dest = partial / entry["path"].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if "source" in entry:
            shutil.copyfile(recipe_dir / entry["source"], dest)
        else:
            dest.write_text(entry["contents"])
        dest.chmod(int(entry.get("mode", "0644"), 8))
    for path, target in recipe.get("symlinks", {}).items():
        dest = partial / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, dest)
    if recipe.get("elf_closure"):
        _elf_closure(partial)
    (partial / ".provision-image.json").write_text(
        json.dumps({"config": recipe.get("config", {}), "label": recipe.get("label", {})})
    )
    try:
        partial.rename(out)
    except OSError:
        shutil.rmtree(partial)
    return out


def component_of(ref: str) -> str:
    """`provision/agent:TAG` -> `agent`."""
    repo = ref.split("@")[0].rsplit(":", 1)[0]
    assert repo.startswith("provision/"), f"the boot rig builds only provision/* images: {ref}"
    return repo.split("/", 1)[1]


# ------------------------------------------------------------------ config.json
def _namespace(kind: str, value: str | None, default: str) -> dict[str, str] | None:
    value = value or default
    if value in ("host", "root"):
        return None
    if value in ("new", "none"):
        return {"type": kind}
    return {"type": kind, "path": value}


def _bind(spec: str) -> dict[str, Any]:
    parts = spec.split(":")
    options = parts[2].split(",") if len(parts) > 2 else ["rw", "rshared"]
    return {"destination": parts[1], "type": "bind", "source": parts[0],
            "options": ["rbind", *options]}  # fmt: skip


def _devices(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for entry in entries:
        rule: dict[str, Any] = {"allow": True, "type": entry.get("type", "a"), "access": "rwm"}
        if entry.get("path") != "all":
            rule.update(major=entry["major"], minor=entry["minor"])
        rules.append(rule)
    return rules


def write_runtime_config(bundle: Path, entry: Mapping[str, Any], image: Mapping[str, Any]) -> None:
    """config.json from LinuxKit's defaults < the image's label < the spec entry."""
    config: Mapping[str, Any] = image.get("config", {})
    merged: dict[str, Any] = dict(image.get("label", {}))
    merged.update({k: v for k, v in entry.items() if k not in ("name", "image")})
    args = list(merged.get("command") or [*config.get("Entrypoint", []), *config.get("Cmd", [])])
    env = list(merged.get("env") or config.get("Env", []))
    caps = merged.get("capabilities")
    if caps is None:
        caps = DEFAULT_CAPS
    elif caps == ["all"]:
        caps = ALL_CAPS
    elif caps == ["none"]:
        caps = []
    readonly = bool(merged.get("readonly", False))
    mounts = {
        "/proc": {"destination": "/proc", "type": "proc", "source": "proc",
                  "options": ["nosuid", "nodev", "noexec", "relatime"]},
        "/dev": {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] + (["ro"] if readonly else [])},
        "/dev/pts": {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        "/sys": {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev"] + (["ro"] if readonly else [])},
        "/sys/fs/cgroup": {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                           "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    }  # fmt: skip
    for tmpfs in merged.get("tmpfs", []):
        dest, _, opts = tmpfs.partition(":")
        mounts[dest] = {"destination": dest, "type": "tmpfs", "source": "tmpfs",
                        "options": opts.split(",") if opts else ["nosuid", "nodev"]}  # fmt: skip
    for bind in [*merged.get("binds", []), *merged.get("binds.add", [])]:
        mount = _bind(bind)
        mounts[mount["destination"]] = mount
    namespaces = [
        ns
        for ns in (
            _namespace("pid", merged.get("pid"), "new"),
            _namespace("network", merged.get("net"), "host"),
            _namespace("ipc", merged.get("ipc"), "host"),
            _namespace("uts", merged.get("uts"), "host"),
            {"type": "mount"},
            {"type": "cgroup"},
        )
        if ns is not None
    ]
    spec = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": int(merged.get("uid", 0)), "gid": int(merged.get("gid", 0))},
            "args": args,
            "env": env,
            "cwd": merged.get("cwd") or config.get("WorkingDir") or "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": bool(merged.get("noNewPrivileges", False)),
        },
        "root": {"path": "rootfs", "readonly": readonly},
        "hostname": merged.get("hostname", ""),
        "mounts": [mounts[k] for k in sorted(mounts)],
        "linux": {
            "namespaces": namespaces,
            "resources": {"devices": _devices(merged.get("devices", []))},
            "rootfsPropagation": merged.get("rootfsPropagation", ""),
        },
    }
    if not spec["hostname"]:
        del spec["hostname"]
    if not spec["linux"]["rootfsPropagation"]:
        del spec["linux"]["rootfsPropagation"]
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    (bundle / "runtime.json").write_text("{}")


# ------------------------------------------------------------------ spec -> rootfs
def load_specs(paths: Sequence[Path]) -> dict[str, Any]:
    """Merge spec files the way `provision build a.yml b.yml` does (lists appended)."""
    merged: dict[str, Any] = {"kernel": {}, "init": [], "onboot": [], "services": [],
                              "onshutdown": [], "files": []}  # fmt: skip
    for path in paths:
        spec = yaml.safe_load(path.read_text()) or {}
        merged["kernel"].update(spec.get("kernel", {}) or {})
        for key in ("init", "onboot", "services", "onshutdown", "files"):
            merged[key].extend(spec.get(key, []) or [])
    return merged


def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".provision-image.json"))  # fmt: skip


def _install_kernel_modules(root: Path) -> None:
    """The modules the kernel component ships (pkg/kernel's list) and their dependencies."""
    source = Path("/lib/modules") / KERNEL_VERSION
    dest = root / "lib/modules" / KERNEL_VERSION
    wanted = load_recipe("kernel")["kernel"]["modules"]
    for name in wanted:
        shown = _run(["modprobe", "-S", KERNEL_VERSION, "--show-depends", name])
        for line in shown.splitlines():
            if line.startswith("insmod "):
                src = Path(line.split()[1])
                rel = src.relative_to(source)
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy2(source / name, dest / name)
    _run(["depmod", "-b", str(root), KERNEL_VERSION])


def assemble_rootfs(spec: Mapping[str, Any], root: Path) -> str:
    """Lay the machine out under ``root``; return the image digest written into it."""
    for ref in spec["init"]:
        _copy_tree(assemble_component(component_of(ref)), root)
    _install_kernel_modules(root)
    for kind in ("onboot", "onshutdown", "services"):
        for index, entry in enumerate(spec[kind]):
            name = entry["name"]
            dirname = name if kind == "services" else f"{index:03d}-{name}"
            bundle = root / "containers" / kind / dirname
            component = assemble_component(component_of(entry["image"]))
            image = json.loads((component / ".provision-image.json").read_text())
            bundle.mkdir(parents=True)
            readonly = {**image.get("label", {}), **entry}.get("readonly", False)
            # image-spec: read-only containers carry rootfs/, writable ones lower/ + tmp/
            # (init overlays a tmpfs on lower/ at boot)
            _copy_tree(component, bundle / ("rootfs" if readonly else "lower"))
            if not readonly:
                (bundle / "tmp").mkdir()
                (bundle / "rootfs").mkdir()
            write_runtime_config(bundle, entry, image)
    for entry in spec["files"]:
        dest = root / entry["path"].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if entry.get("directory"):
            dest.mkdir(parents=True, exist_ok=True)
        elif "symlink" in entry:
            os.symlink(entry["symlink"], dest)
        else:
            dest.write_text(entry.get("contents", ""))
            dest.chmod(int(entry.get("mode", "0600"), 8))
    digest = "sha256:" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    (root / "etc/provision").mkdir(parents=True, exist_ok=True)
    (root / "etc/provision/image.json").write_text(json.dumps({"digest": digest}) + "\n")
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    for name, minor in (("console", (5, 1)), ("null", (1, 3))):
        if not (dev / name).exists():
            os.mknod(dev / name, 0o600 | stat.S_IFCHR, os.makedev(*minor))
    return digest


def link_duplicates(root: Path) -> None:
    """Hard-link identical regular files (every container carries its own busybox and
    libc): the cpio then stores each content once."""
    seen: dict[tuple[int, str], Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        info = path.stat()
        key = (info.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
        first = seen.setdefault(key, path)
        if first != path and not path.samefile(first):
            path.unlink()
            os.link(first, path)


def write_initrd(root: Path, dest: Path, compress: str = "gzip") -> None:
    """newc cpio of ``root`` (owner 0), compressed with gzip (default), xz or zstd."""
    names = sorted(
        "./" + os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    )
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=root,
                          input="\n".join(names).encode() + b"\n", capture_output=True, check=True)  # fmt: skip
    partial = dest.with_name(dest.name + ".partial")
    if compress == "gzip":
        data = gzip.compress(cpio.stdout, compresslevel=9, mtime=0)
    elif compress == "xz":
        data = subprocess.run(["xz", "-9", "--check=crc32", "-c"], input=cpio.stdout,
                              capture_output=True, check=True).stdout  # fmt: skip
    else:
        data = subprocess.run(["zstd", "-19", "-c", "-q"], input=cpio.stdout,
                              capture_output=True, check=True).stdout  # fmt: skip
    partial.write_bytes(data)
    partial.rename(dest)


def build_image(specs: Sequence[Path], out: Path, compress: str = "gzip") -> tuple[Path, Path, str]:
    """Build kernel + initrd for ``specs`` into ``out``: (kernel, initrd, digest)."""
    root = out / "rootfs"
    root.mkdir(parents=True)
    digest = assemble_rootfs(load_specs(specs), root)
    link_duplicates(root)
    initrd = out / "initrd.img"
    write_initrd(root, initrd, compress)
    return Path(f"/boot/vmlinuz-{KERNEL_VERSION}"), initrd, digest


# ------------------------------------------------------------------ the real pipeline
def build_with_provision(specs: Sequence[Path], out: Path, name: str) -> tuple[Path, Path, str]:
    """`provision pkg build` every component the specs name, then `provision build`:
    (kernel, initrd, image digest)."""
    merged = load_specs(specs)
    refs = [merged["kernel"]["image"], *merged["init"]]
    refs += [e["image"] for kind in ("onboot", "services", "onshutdown") for e in merged[kind]]
    components = sorted({component_of(ref) for ref in refs})
    provision = [sys.executable, "-m", "provision"]
    for argv in (
        [*provision, "pkg", "build", "-q", *[f"pkg/{c}" for c in components]],
        [*provision, "build", "-q", "-o", str(out), "--name", name, *map(str, specs)],
    ):
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}"
    manifest = json.loads((out / f"{name}.manifest.json").read_text())
    return out / f"{name}-kernel", out / f"{name}-initrd.img", manifest["image_digest"]
