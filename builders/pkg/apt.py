"""Debian packages through the host's apt: resolve versions, download and verify .debs.

Nothing here names a mirror: apt-cache and apt-get run with the system's configuration, or
with a sources file the user gives (``--sources FILE`` / ``$PROVISION_APT_SOURCES``), whose
index lists then live in a private state directory under the cache. apt verifies the signed
Release files of either; the SHA256 it reads from them is what the lock records and what every
downloaded .deb must hash to.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.builders.pkg.lock import LockedPackage
from provision.errors import DigestMismatchError, ProvisionError
from provision.fsutil import copy_file_atomic, file_sha256_hex, move_into_place
from provision.runner import require_tools, run

SOURCES_ENV = "PROVISION_APT_SOURCES"
DEB_CACHE_ENV = "PROVISION_DEB_CACHE"
HOST_ARCHIVES = Path("/var/cache/apt/archives")
Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/provision`` (default ``~/.cache/provision``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "provision"


def default_deb_cache() -> Path:
    value = os.environ.get(DEB_CACHE_ENV)
    return Path(value) if value else default_cache_root() / "debs"


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Paragraphs of ``Key: value`` fields (continuation lines joined with newlines)."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def parse_depends(field: str) -> list[list[str]]:
    """``a (>= 1) | b, c`` -> [[a, b], [c]] (names only, architecture qualifiers dropped)."""
    groups = []
    for group in field.split(","):
        names = [alt.strip().split(" ")[0].split(":")[0] for alt in group.split("|")]
        names = [n for n in names if n]
        if names:
            groups.append(names)
    return groups


@dataclass(frozen=True)
class AptConfig:
    """How to call apt: the host's configuration (no options), or a user's sources file
    with private index lists in ``state_dir``."""

    options: tuple[str, ...] = ()
    state_dir: Path | None = None
    sources: Path | None = None

    @classmethod
    def host(cls) -> AptConfig:
        return cls()

    @classmethod
    def for_sources(cls, sources: Path, cache_root: Path | None = None) -> AptConfig:
        """apt configured by ``sources`` alone (a ``.list`` or deb822 ``.sources`` file)."""
        sources = sources.expanduser().resolve()
        if not sources.is_file():
            raise ProvisionError(f"{sources}: no such sources file")
        text = sources.read_bytes()
        key = hashlib.sha256(str(sources).encode() + b"\0" + text).hexdigest()[:16]
        state = (cache_root or default_cache_root()) / "apt" / key
        suffix = ".sources" if sources.suffix == ".sources" else ".list"
        options = {
            "Dir::Etc::SourceList": str(state / "empty.list"),
            "Dir::Etc::SourceParts": str(state / "sources.list.d"),
            "Dir::State::Lists": str(state / "lists"),
            "Dir::Cache": str(state / "cache"),
        }
        for sub in ("sources.list.d", "lists/partial", "cache/archives/partial"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        (state / "empty.list").touch()
        part = state / "sources.list.d" / f"provision{suffix}"
        if not part.is_file() or part.read_bytes() != text:
            part.write_bytes(text)
        return cls(tuple(f"{k}={v}" for k, v in options.items()), state, sources)

    @classmethod
    def from_environment(
        cls, sources: Path | None = None, cache_root: Path | None = None
    ) -> AptConfig:
        """``sources`` if given, else ``$PROVISION_APT_SOURCES``, else the host's config."""
        value = sources or (Path(os.environ[SOURCES_ENV]) if os.environ.get(SOURCES_ENV) else None)
        return cls.for_sources(value, cache_root) if value else cls.host()

    def argv(self, program: str, *args: str) -> list[str]:
        argv = [program]
        options = list(self.options)
        if os.geteuid() == 0:
            options.append("APT::Sandbox::User=root")
        for option in options:
            argv += ["-o", option]
        return argv + list(args)


class Apt:
    """apt-cache / apt-get with one configuration. ``runner`` defaults to provision.runner.run."""

    def __init__(self, config: AptConfig | None = None, runner: Runner | None = None) -> None:
        self.config = config or AptConfig.host()
        self._run = runner or run

    def _output(self, program: str, *args: str, cwd: Path | None = None) -> str:
        result = self._run(self.config.argv(program, *args), cwd=cwd)
        return (result.stdout or b"").decode(errors="replace")

    def require(self) -> None:
        require_tools(["apt-get", "apt-cache", "apt-config", "dpkg-deb"])

    def ensure_lists(self, refresh: bool = False) -> None:
        """With a user's sources file: fetch (and verify) its index once, or again on refresh."""
        state = self.config.state_dir
        if state is None:
            return
        lists = state / "lists"
        have = any(p.name.endswith(("Packages", "Packages.lz4", "Packages.gz", "Packages.xz"))
                   for p in lists.iterdir())  # fmt: skip
        if refresh or not have:
            self._output("apt-get", "-q", "update")

    def architecture(self) -> str:
        """apt's architecture (APT::Architecture, the host's unless configured)."""
        out = self._output("apt-config", "dump", "--no-empty", "--format", "%v%n",
                           "APT::Architecture")  # fmt: skip
        return out.strip().splitlines()[0] if out.strip() else "amd64"

    def candidate(self, name: str) -> str:
        """The version apt would install of ``name`` (pinning honoured)."""
        for line in self._output("apt-cache", "policy", name).splitlines():
            if line.strip().startswith("Candidate:"):
                version = line.split(":", 1)[1].strip()
                if version and version != "(none)":
                    return version
        raise ProvisionError(
            f"package {name} is not in apt's index",
            hint="check the name; refresh the index (apt-get update, or pkg lock --update "
            "with --sources)",
        )

    def candidates(self, names: Sequence[str]) -> dict[str, str]:
        """Candidate versions of several packages in one apt-cache call (unknown ones left
        out)."""
        if not names:
            return {}
        result = self._run(self.config.argv("apt-cache", "policy", *names), check=False)
        found: dict[str, str] = {}
        current = None
        for line in (result.stdout or b"").decode(errors="replace").splitlines():
            if line and not line[0].isspace() and line.endswith(":"):
                current = line[:-1].split(":")[0]
            elif current and line.strip().startswith("Candidate:"):
                version = line.split(":", 1)[1].strip()
                if version and version != "(none)":
                    found[current] = version
        return found

    def resolve_many(
        self, names: Sequence[str], architecture: str
    ) -> dict[str, tuple[LockedPackage, dict[str, str]]]:
        """Like :meth:`resolve` for many names with two apt-cache calls; unknown names and
        virtual packages are left out."""
        versions = self.candidates(names)
        if not versions:
            return {}
        specs = [f"{n}={v}" for n, v in versions.items()]
        result = self._run(self.config.argv("apt-cache", "show", *specs), check=False)
        resolved = {}
        for record in parse_deb822((result.stdout or b"").decode(errors="replace")):
            name = record.get("Package", "")
            if (
                versions.get(name) == record.get("Version")
                and record.get("Architecture") in (architecture, "all")
                and record.get("SHA256")
                and record.get("Filename")
                and name not in resolved
            ):
                resolved[name] = (_locked(name, record), record)
        return resolved

    def show(self, name: str, version: str, architecture: str) -> dict[str, str] | None:
        """The index record of ``name`` at ``version`` (None when apt does not know it)."""
        result = self._run(self.config.argv("apt-cache", "show", f"{name}={version}"), check=False)
        if result.returncode != 0:
            return None
        text = (result.stdout or b"").decode(errors="replace")
        for paragraph in parse_deb822(text):
            if (
                paragraph.get("Package") == name
                and paragraph.get("Version") == version
                and paragraph.get("Architecture") in (architecture, "all")
                and paragraph.get("SHA256")
                and paragraph.get("Filename")
            ):
                return paragraph
        return None

    def resolve(self, name: str, architecture: str) -> tuple[LockedPackage, dict[str, str]]:
        """The candidate version of ``name`` as a lock entry, and its index record."""
        version = self.candidate(name)
        record = self.show(name, version, architecture)
        if record is None:
            raise ProvisionError(
                f"package {name} {version}: no downloadable record in apt's index",
                hint="it may be installed locally only; refresh the index",
            )
        return _locked(name, record), record

    def check_index(self, package: LockedPackage) -> bool:
        """Compare the lock entry with apt's index: True when the index has it and agrees,
        False when the index no longer lists that version; raise on disagreement."""
        record = self.show(package.name, package.version, package.architecture)
        if record is None:
            return False
        if record["SHA256"].lower() != package.sha256:
            raise DigestMismatchError(
                f"{package.name} {package.version}: the lock says SHA256 {package.sha256}, "
                f"apt's index says {record['SHA256'].lower()}",
                hint="the lock was edited or the archive changed a published file; "
                "re-run provision pkg lock and review the change",
            )
        return True

    def download(self, package: LockedPackage, cache_dir: Path) -> Path:
        """The verified .deb of ``package`` in ``cache_dir`` (downloaded once, reused)."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        target = cache_dir / package.deb_name
        if target.is_file():
            verify_deb(target, package)
            return target
        in_index = self.check_index(package)
        for candidate in _host_archive_names(package):
            host = self.config.state_dir is None and candidate.is_file()
            if host and file_sha256_hex(candidate) == package.sha256:
                copy_file_atomic(candidate, target)
                return target
        if not in_index:
            raise ProvisionError(
                f"{package.name} {package.version} is neither cached nor in apt's index",
                hint="refresh the index (apt-get update) or re-lock: provision pkg lock",
            )
        with tempfile.TemporaryDirectory(prefix=".download.", dir=cache_dir) as tmp:
            spec = f"{package.name}:{package.architecture}={package.version}"
            if package.architecture == "all":
                spec = f"{package.name}={package.version}"
            self._output("apt-get", "-q", "download", spec, cwd=Path(tmp))
            debs = sorted(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise ProvisionError(f"apt-get download {spec} wrote {len(debs)} files, not one")
            verify_deb(debs[0], package)
            move_into_place(debs[0], target)
        return target


def _locked(name: str, record: dict[str, str]) -> LockedPackage:
    return LockedPackage(
        name=name,
        version=record["Version"],
        architecture=record["Architecture"],
        filename=record["Filename"],
        size=int(record.get("Size", "0")),
        sha256=record["SHA256"].lower(),
    )


def _host_archive_names(package: LockedPackage) -> Sequence[Path]:
    quoted = package.version.replace(":", "%3a")
    return [
        HOST_ARCHIVES / f"{package.name}_{quoted}_{package.architecture}.deb",
        HOST_ARCHIVES / package.deb_name,
    ]


def verify_deb(path: Path, package: LockedPackage) -> None:
    """Refuse a .deb whose SHA256 is not the locked one."""
    actual = file_sha256_hex(path)
    if actual != package.sha256:
        raise DigestMismatchError(
            f"{path}: SHA256 {actual} is not the locked {package.sha256} "
            f"({package.name} {package.version})",
            hint="the file was altered or is not what apt's signed index lists; delete it to "
            "download it again",
        )
