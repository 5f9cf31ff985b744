"""Fixtures for the component builder: recipes in temporary directories, a download cache
shared by the session (set $PROVISION_TEST_DEB_CACHE to keep it between runs), and a local
flat apt repository of hand-made packages (used through --sources, no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from provision.builders.pkg import Apt, AptConfig, Recipe, load_recipe, lock_recipe, write_lock

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deb_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keep = os.environ.get("PROVISION_TEST_DEB_CACHE")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep)
    return tmp_path_factory.mktemp("debs")


@pytest.fixture(scope="session")
def host_apt() -> Apt:
    return Apt(AptConfig.host())


def write_recipe(directory: Path, text: str, files: Mapping[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "build.yml").write_text(text)
    for name, content in (files or {}).items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(content)
    return directory


def locked(directory: Path, apt: Apt) -> Recipe:
    recipe = load_recipe(directory)
    write_lock(recipe.lock_file, lock_recipe(recipe, apt))
    return recipe


# ------------------------------------------------------------------ a local apt repository
def make_deb(workdir: Path, name: str, files: Mapping[str, bytes | str], version: str = "1.0",
             depends: str = "", section: str = "misc") -> Path:  # fmt: skip
    """A real .deb built with dpkg-deb -b; ``files`` maps paths to contents (str = symlink)."""
    root = workdir / f"{name}-root"
    (root / "DEBIAN").mkdir(parents=True)
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        f"Section: {section}\nMaintainer: Test <test@localhost>\nDescription: test package\n"
    )
    if depends:
        control += f"Depends: {depends}\n"
    (root / "DEBIAN" / "control").write_text(control)
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.symlink_to(content)
        else:
            target.write_bytes(content)
            target.chmod(0o755 if content.startswith(b"\x7fELF") else 0o644)
    out = workdir / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(out)],
                   check=True, capture_output=True)  # fmt: skip
    return out


def _ar_members(data: bytes) -> list[tuple[str, bytes]]:
    assert data.startswith(b"!<arch>\n")
    members, at = [], 8
    while at < len(data):
        header = data[at : at + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode())
        members.append((name, data[at + 60 : at + 60 + size]))
        at += 60 + size + (size % 2)
    return members


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, body in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode() + body
        out += b"\n" if len(body) % 2 else b""
    return out


def replace_data(deb: Path, entries: list[tarfile.TarInfo]) -> None:
    """Replace the file-system tar of ``deb`` with ``entries`` (hostile ones, for tests)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    members = [(n, b) for n, b in _ar_members(deb.read_bytes()) if not n.startswith("data.tar")]
    members.append(("data.tar.gz", gzip.compress(buffer.getvalue(), mtime=0)))
    deb.write_bytes(_ar(members))


@dataclass
class LocalRepo:
    """A flat repository ``deb [trusted=yes] file:DIR ./`` and an Apt configured for it."""

    directory: Path
    sources: Path
    cache_root: Path

    def publish(self) -> Apt:
        """Write Packages and Release for the .debs in the directory; a fresh Apt."""
        paragraphs = []
        for deb in sorted(self.directory.glob("*.deb")):
            control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True,
                                     capture_output=True, text=True).stdout.strip()  # fmt: skip
            body = deb.read_bytes()
            paragraphs.append(
                f"{control}\nFilename: ./{deb.name}\nSize: {len(body)}\n"
                f"SHA256: {hashlib.sha256(body).hexdigest()}\n"
            )
        packages = "\n".join(paragraphs).encode()
        (self.directory / "Packages").write_bytes(packages)
        (self.directory / "Release").write_text(
            "Origin: provision-test\nLabel: provision-test\nSuite: test\nCodename: test\n"
            "Architectures: amd64 all\nSHA256:\n"
            f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n"
        )
        apt = Apt(AptConfig.for_sources(self.sources, self.cache_root))
        apt.ensure_lists(refresh=True)
        return apt


@pytest.fixture
def local_repo(tmp_path: Path) -> LocalRepo:
    directory = tmp_path / "repo"
    directory.mkdir()
    sources = tmp_path / "test.list"
    sources.write_text(f"deb [trusted=yes] file:{directory} ./\n")
    return LocalRepo(directory, sources, tmp_path / "cache")


MakeDeb = Callable[..., Path]


def recipe_applets(recipe: Path, bin_dir: Path, under: str = "/") -> Path:
    """``bin_dir`` holding the host's busybox under each name the recipe at ``recipe`` links to
    busybox (those below ``under``), nothing else: the component's own tools, so that tests run
    its scripts on the host with exactly these."""
    links = yaml.safe_load((recipe / "build.yml").read_text())["symlinks"]
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("needs busybox on the host (apt-get install busybox-static)")
    bin_dir.mkdir()
    for link, target in links.items():
        if target == "busybox" and link.startswith(under):
            (bin_dir / Path(link).name).symlink_to(busybox)
    return bin_dir


@pytest.fixture
def applets(tmp_path: Path) -> Path:
    """A PATH holding the metadata recipe's busybox links, nothing else."""
    return recipe_applets(REPO / "pkg" / "metadata", tmp_path / "bin")


METADATA_RECIPE = REPO / "pkg" / "metadata"


def run_metadata_program(applets: Path, tmp_path: Path, env: Mapping[str, str]) -> tuple[str, Path]:
    """The metadata component's program run on this host with only ``applets`` on PATH, in
    its own UTS namespace (the hostname it sets is not the host's), ``env`` (the metadata
    service's address and what else the cloud needs) added to its settings. Returns its output,
    ending with ``hostname-now: NAME``, and the config directory it wrote."""
    config = tmp_path / "config"
    settings = {
        "PATH": str(applets),
        "METADATA_SOURCES": "cloud",
        "METADATA_CONFIG": str(config),
        "METADATA_WORK": str(tmp_path / "work"),
        "METADATA_EXPAND": str(METADATA_RECIPE / "files" / "expand.awk"),
        **env,
    }
    script = f'sh "{METADATA_RECIPE / "files" / "metadata"}" && echo "hostname-now: $(hostname)"'
    unshare = shutil.which("unshare")
    assert unshare is not None, "needs unshare (util-linux)"
    done = subprocess.run(
        [unshare, "--uts", str(applets / "sh"), "-c", script],
        env=settings,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, config
