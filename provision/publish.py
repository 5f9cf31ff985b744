"""Publishing a build's outputs into the output directory all at once, and clearing what
builds killed earlier left there.

The output directory of a build named NAME holds (every dot name is the build's own)::

    NAME-kernel           -> .NAME.current/NAME-kernel      one relative link per output
    NAME.manifest.json    -> .NAME.current/NAME.manifest.json
    .NAME.current         -> .NAME.gen-<16 hex>             THE switch: one symlink
    .NAME.gen-<16 hex>/                                     the files of one build
    .NAME.build-<8>/      a running build's work directory (spool, intermediates, staging)
    .NAME.lock            held (flock) by the running build of NAME, removed when it ends

A build moves all its files, manifest included, into one new generation directory (one
directory rename), makes sure a link exists for each name, then replaces ``.NAME.current``
(one ``rename(2)``), then removes the links the new build no longer has and the old
generation. At every instant, whatever kills the build, each name resolves either through
the old generation or through the new one: a reader sees the complete previous outputs
(links of names only the new build has dangle, which reads as absent) or the complete new
ones, never a mix. Outputs written by an older provision as regular files are first adopted
into a generation by hard links, without changing what any name reads.

A later build of NAME takes the lock first (a live build of NAME in the same directory makes
it fail at once: two builds would race for the switch) and then removes every
``.NAME.build-*`` and ``.NAME.gen-*`` the switch does not point at, and dangling links into
``.NAME.current``: with the lock held, no live build owns any of them.

Not covered: power loss (files are not fsynced before the switch).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from provision.errors import ProvisionError, UsageError
from provision.fsutil import check_replaceable, fsync_directory


class BuildBusyError(ProvisionError):
    """Another live build of the same name is writing into the same output directory."""


def current_link(name: str) -> str:
    return f".{name}.current"


class OutputSlot:
    """The outputs of build ``name`` in ``outdir``: the lock, stale work, the switch."""

    def __init__(self, outdir: Path, name: str) -> None:
        if not name or "/" in name or name.startswith("."):
            raise UsageError(f"invalid output name {name!r}")
        self.outdir = outdir
        self.name = name
        self._fd: int | None = None
        self.work: Path | None = None
        prefix = re.escape(f".{name}.")
        self._work_re = re.compile(prefix + r"build-[a-z0-9_]{8}")
        self._gen_re = re.compile(prefix + r"gen-[0-9a-f]{16}")
        self._tmp_re = re.compile(prefix + r"current\.tmp-[0-9a-f]{16}")

    # -- the lock ----------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.outdir / f".{self.name}.lock"

    def open(self) -> OutputSlot:
        """Take the lock, clear what killed builds left, make the work directory
        (:attr:`work`, on the output directory's file system)."""
        self.outdir.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            self.clean_stale()
            self.work = Path(tempfile.mkdtemp(prefix=f".{self.name}.build-", dir=self.outdir))
        except BaseException:
            self._release()
            raise
        return self

    def close(self) -> None:
        """Remove the work directory, release the lock."""
        work, self.work = self.work, None
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        self._release()

    def __enter__(self) -> OutputSlot:
        return self.open()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _acquire(self) -> None:
        path = self.lock_path
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise BuildBusyError(
                    f"another build of {self.name}{f' (pid {owner})' if owner else ''} is "
                    f"writing into {self.outdir}",
                    hint="wait for it, or build into another directory (-o) or name (--name)",
                ) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its last owner removed meanwhile
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return
            os.close(fd)

    def _release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):  # while still holding it: see _acquire
            os.unlink(self.lock_path)
        os.close(self._fd)
        self._fd = None

    # -- stale work ----------------------------------------------------------------------------
    def _current_target(self) -> str | None:
        try:
            return os.readlink(self.outdir / current_link(self.name))
        except OSError:
            return None

    def clean_stale(self) -> list[str]:
        """Remove what killed builds of this name left (call with the lock held)."""
        current = self._current_target()
        removed = []
        with os.scandir(self.outdir) as entries:
            for entry in entries:
                if self._work_re.fullmatch(entry.name) or (
                    self._gen_re.fullmatch(entry.name) and entry.name != current
                ):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                        removed.append(entry.name)
                elif self._tmp_re.fullmatch(entry.name) or self._is_dangling_output(entry.name):
                    os.unlink(entry.path)
                    removed.append(entry.name)
        return removed

    def _is_dangling_output(self, entry: str) -> bool:
        path = self.outdir / entry
        try:
            target = os.readlink(path)
        except OSError:
            return False
        return target == f"{current_link(self.name)}/{entry}" and not path.exists()

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, files: Sequence[Path]) -> list[Path]:
        """Publish ``files`` (inside :attr:`work`; unique names) as this build's complete
        outputs; returns their paths in the output directory."""
        assert self.work is not None, "open() the slot first"
        work = self.work
        names = [path.name for path in files]
        for name in names:
            check_replaceable(self.outdir / name)
        self._adopt_regular_outputs()
        staging = work / "publish"
        staging.mkdir()
        for path in files:
            os.chmod(path, 0o644)
            os.rename(path, staging / path.name)
        generation = f".{self.name}.gen-{secrets.token_hex(8)}"
        os.rename(staging, self.outdir / generation)
        for name in names:
            self._link(name)
        old = self._current_target()
        self._switch(generation)
        keep = set(names)
        with os.scandir(self.outdir) as entries:
            for entry in entries:
                if entry.name not in keep and self._is_dangling_output(entry.name):
                    os.unlink(entry.path)
        if old is not None and old != generation and self._gen_re.fullmatch(old):
            shutil.rmtree(self.outdir / old, ignore_errors=True)
        return [self.outdir / name for name in names]

    def _link(self, name: str) -> None:
        """Make ``name`` a link through the switch (unless it is one already)."""
        target = f"{current_link(self.name)}/{name}"
        path = self.outdir / name
        try:
            if os.readlink(path) == target:
                return
        except OSError:
            pass
        tmp = self.outdir / f".{self.name}.current.tmp-{secrets.token_hex(8)}"
        os.symlink(target, tmp)
        os.replace(tmp, path)

    def _switch(self, generation: str) -> None:
        tmp = self.outdir / f".{self.name}.current.tmp-{secrets.token_hex(8)}"
        os.symlink(generation, tmp)
        os.replace(tmp, self.outdir / current_link(self.name))
        fsync_directory(self.outdir)

    def _adopt_regular_outputs(self) -> None:
        """Outputs of a build that wrote regular files (no switch yet, or a build killed while
        adopting): hard-link them into a generation and turn each into a link to the same
        file, so that no name ever reads differently."""
        current = self._current_target()
        if current is not None:
            gen_dir = self.outdir / current
            for name in os.listdir(gen_dir) if gen_dir.is_dir() else ():
                path = self.outdir / name
                if path.is_file() and not path.is_symlink() and path.samefile(gen_dir / name):
                    self._link(name)
            return
        previous = self._previous_outputs()
        if not previous:
            return
        generation = f".{self.name}.gen-{secrets.token_hex(8)}"
        gen_dir = self.outdir / generation
        gen_dir.mkdir()
        for name in previous:
            try:
                os.link(self.outdir / name, gen_dir / name)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK):
                    raise
                shutil.copy2(self.outdir / name, gen_dir / name)
        self._switch(generation)
        for name in previous:
            self._link(name)

    def _previous_outputs(self) -> list[str]:
        """The regular files the manifest of a build without the switch names (and itself)."""
        manifest = self.outdir / f"{self.name}.manifest.json"
        if not manifest.is_file() or manifest.is_symlink():
            return []
        try:
            records = json.loads(manifest.read_text()).get("outputs") or []
            files = [str(r["file"]) for r in records if isinstance(r, dict)]
        except (OSError, ValueError, KeyError, AttributeError):
            return []
        found = []
        for name in dict.fromkeys([*files, manifest.name]):
            path = self.outdir / name
            if (
                "/" not in name
                and not name.startswith(".")
                and path.is_file()
                and not path.is_symlink()
            ):
                found.append(name)
        return found
