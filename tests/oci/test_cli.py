"""``provision cache ...`` as a user runs it."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pytest
from oci_testkit import Registry, make_image, make_layered_image

from provision.commands import cache
from provision.errors import ProvisionError
from provision.oci.store import ImageStore


def cache_cli(store: ImageStore, *args: str) -> int:
    """What ``provision cache --cache DIR ARGS`` does, with only this command registered (so
    these tests do not depend on other commands' modules), and the CLI's exit code rules."""
    parser = argparse.ArgumentParser(prog="provision")
    cache.register(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(["cache", "--cache", str(store.root), *args])
    try:
        return int(parsed.func(parsed) or 0)
    except ProvisionError as exc:
        print(f"provision: error: {exc.message}", file=sys.stderr)
        return exc.exit_code


def test_ls_rm_gc(store: ImageStore, capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image(store, "listed:1", {"f": b"data"})
    assert cache_cli(store, "ls", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    (row,) = listing["images"]
    assert row["name"] == "docker.io/library/listed:1" and row["digest"] == image.digest
    assert row["platforms"] == ["linux/amd64"] and row["size"] > 0
    assert cache_cli(store, "ls") == 0
    assert "docker.io/library/listed:1" in capsys.readouterr().out
    assert cache_cli(store, "rm", "listed:1") == 0
    assert cache_cli(store, "rm", "listed:1") == 1
    assert "not in the cache" in capsys.readouterr().err
    assert cache_cli(store, "gc") == 0
    assert "freed" in capsys.readouterr().out
    assert not store.has_blob(image.digest)


def test_bad_reference_is_a_usage_error(
    store: ImageStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cache_cli(store, "export", "Not_Valid:1", "-o", str(store.root / "x.tar")) == 2
    assert "invalid image reference" in capsys.readouterr().err


def test_export_import(
    store: ImageStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(store, "moved:1", {"f": b"moved"})
    archive = tmp_path / "out" / "moved.tar"
    assert cache_cli(store, "export", "moved:1", "-o", str(archive)) == 0
    other = ImageStore(tmp_path / "other")
    assert cache_cli(other, "import", str(archive)) == 0
    assert f"docker.io/library/moved:1 {image.digest}" in capsys.readouterr().out
    assert other.resolve("moved:1").digest == image.digest


@pytest.mark.registry
def test_push_and_pull(
    registry: Registry, store: ImageStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(store, "cli:1", {"f": b"cli"})
    target = f"{registry.host}/cli/app:1"
    assert cache_cli(store, "push", "cli:1", target) == 0
    assert "push " + target in capsys.readouterr().err  # progress went to stderr
    other = ImageStore(tmp_path / "other")
    assert cache_cli(other, "pull", target, "--platform", "linux/amd64") == 0
    captured = capsys.readouterr()
    assert f"{target} {image.digest} linux/amd64" in captured.out
    assert "100%" in captured.err
    assert cache_cli(other, "pull", "-q", f"{registry.host}/cli/absent:1") == 1


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    ticks = iter([0.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    terminal = Terminal()
    report = cache.progress_printer("pull app:1", terminal, clock=lambda: next(ticks))
    report(0, 4 << 20)
    report(2 << 20, 4 << 20)
    report(4 << 20, 4 << 20)
    shown = terminal.getvalue()
    assert shown.count("\r\033[K") == 3 and shown.endswith("\n") and shown.count("\n") == 1
    assert "pull app:1 [############------------]  50% 2.0 MiB / 4.0 MiB" in shown
    assert "[########################] 100% 4.0 MiB / 4.0 MiB" in shown

    ticks = iter([0.0, 0.0, 1.0, 6.0, 7.0])
    plain = io.StringIO()
    report = cache.progress_printer("pull app:1", plain, clock=lambda: next(ticks))
    report(0, 100)
    report(10, 100)  # 1 s after the first line: not printed
    report(60, 100)
    report(100, 100)
    assert plain.getvalue().splitlines() == [
        "pull app:1:   0% 0 B / 100 B",
        "pull app:1:  60% 60 B / 100 B",
        "pull app:1: 100% 100 B / 100 B",
    ]


@pytest.mark.registry
def test_pull_parallel_option(
    registry: Registry, store: ImageStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_layered_image(store, "cli-par:1", layers=3, size=20_000, seed=4)
    target = f"{registry.host}/cli/par:1"
    assert cache_cli(store, "push", "-q", "cli-par:1", target) == 0
    other = ImageStore(tmp_path / "other")
    assert cache_cli(other, "pull", "-j", "3", target) == 0
    assert f"{target} {image.digest}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_code:
        cache_cli(other, "pull", "--parallel", "0", target)
    assert exit_code.value.code == 2
    assert "--parallel: 0 is not a whole number from 1 to 64" in capsys.readouterr().err
