"""The cloud-independent half of ``provision push``: SOURCE resolution, progress lines and
bounded waits (provision/push.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.clock import FakeClock
from provision.errors import UsageError
from provision.push import (
    PushOptions,
    TransferProgress,
    WaitTimeoutError,
    push_source,
    resolve_source,
    wait_for,
)


def write_manifest(out: Path, formats: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "web.manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "name": "web",
                "image_digest": "sha256:" + "ab" * 32,
                "platform": "linux/amd64",
                "outputs": [{"file": f"web.{f}", "format": f} for f in formats],
            }
        )
    )
    return manifest


def test_a_manifest_or_its_directory_resolves_to_the_first_format_the_target_boots(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path / "out", ["qcow2", "raw-bios", "raw-efi"])
    for source in (manifest, manifest.parent):
        resolved = resolve_source(source, ("aws", "raw-efi", "raw-bios"))
        artifact = resolved.load()
        assert resolved.digest == "sha256:" + "ab" * 32
        assert artifact.format == "raw-efi" and artifact.files == (
            tmp_path / "out" / "web.raw-efi",
        )


def test_a_source_without_a_bootable_format_or_that_does_not_exist_is_a_usage_error(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path / "out", ["qcow2"])
    with pytest.raises(UsageError, match="none of the formats aws, raw-efi"):
        resolve_source(manifest, ("aws", "raw-efi"))
    with pytest.raises(UsageError, match="no such file"):
        resolve_source(tmp_path / "missing.manifest.json", ("aws",))


def test_a_source_that_is_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "web.manifest.json"
    os.mkfifo(fifo)  # opening it would block: nothing is ever written
    with pytest.raises(UsageError, match="not a file or a directory"):
        resolve_source(fifo, ("gcp",))


def test_every_target_that_pushes_declares_its_flags_where_the_cli_finds_them() -> None:
    """`provision push NAME` is built from providers/NAME/push_command.py alone (no SDK import);
    the target's own Pusher.push_command is that same table, and each flag fills an option."""
    import dataclasses

    from provision.providers import get_target, push_commands, target_names
    from provision.push import Pusher

    commands = push_commands()
    pushers = {n for n in target_names() if isinstance(get_target(n), Pusher)}
    assert set(commands) == pushers and pushers
    fields = {f.name for f in dataclasses.fields(PushOptions)}
    for name, command in commands.items():
        target = get_target(name)
        assert isinstance(target, Pusher) and target.push_command is command
        assert {f.dest for f in command.flags} <= fields
        grouped = {dest for group in command.exclusive for dest in group}
        assert grouped <= {f.dest for f in command.flags}


def test_push_flags_reach_the_options_and_others_clouds_flags_are_refused(tmp_path: Path) -> None:
    from provision.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["push", "gcp", "web.yml", "--project", "p", "--bucket", "b", "--label", "a=1",
         "--label", "b=2", "--guest-os-features", "GVNIC, UEFI_COMPATIBLE"]
    )  # fmt: skip
    assert args.target == "gcp" and args.source == Path("web.yml")
    assert (args.project, args.bucket, args.labels) == ("p", "b", [("a", "1"), ("b", "2")])
    assert args.guest_os_features == ("GVNIC", "UEFI_COMPATIBLE")
    assert not hasattr(args, "family")  # not given: PushOptions' own default
    azure = parser.parse_args(["push", "azure", "x", "--region", "eastus", "--replicas", "a=2"])
    assert azure.region == "eastus" and azure.replicas == {"a": 2}
    for argv in (
        ["push", "azure", "x", "--share-with", "1"],  # AWS's
        ["push", "gcp", "x", "--region", "r"],  # GCP has no region
        ["push", "azure", "x", "--managed-image", "--gallery", "g"],
        ["push", "gcp", "x", "--label", "novalue"],
        ["push", "simulated", "x"],
    ):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(argv)
        assert exited.value.code == 2, argv


def test_a_target_that_cannot_push_is_refused(tmp_path: Path) -> None:
    from provision.providers import get_target

    manifest = write_manifest(tmp_path / "out", ["kernel+initrd"])
    with pytest.raises(UsageError, match="the simulated target cannot push images"):
        push_source(get_target("simulated"), "simulated", manifest, PushOptions())


def test_a_bounded_wait_names_what_it_waited_for_and_the_last_status() -> None:
    clock = FakeClock()
    states = iter(["pending 10%", "pending 40%"] + ["pending 70%"] * 1000)
    start = clock.now()
    with pytest.raises(
        WaitTimeoutError, match=r"snapshot snap-1 to complete after 60 s: still pending 70%"
    ):
        wait_for(lambda: next(states), what="snapshot snap-1 to complete", timeout=60, clock=clock)
    assert clock.now() - start == pytest.approx(60)
    done = iter(["pending", None])
    wait_for(lambda: next(done), what="x", timeout=60, clock=clock)


def test_progress_reports_sent_zero_and_resumed_bytes_at_most_once_per_interval() -> None:
    now = [0.0]
    lines: list[str] = []
    progress = TransferProgress(
        lines.append, "snapshot snap-1", 8 * 1024 * 1024, interval=1.0, now=lambda: now[0]
    )
    progress.add(sent=1024 * 1024)
    progress.add(sent=1024 * 1024)  # same instant: not reported
    now[0] = 2.0
    progress.add(skipped=4 * 1024 * 1024, present=2 * 1024 * 1024)
    progress.finish()
    assert len(lines) == 3
    assert lines[-1] == (
        "snapshot snap-1: 8/8 MiB (100%), sent 2.0 MiB, zero 4.0 MiB, already there 2.0 MiB, "
        "1.0 MiB/s"
    )


def test_on_a_terminal_transfer_progress_is_one_bar_redrawn_in_place() -> None:
    import io

    from provision.commands.push import ProgressPrinter
    from provision.push import ProgressLine

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    printer = ProgressPrinter(out)
    printer.say("writing web.raw")
    printer.say(ProgressLine.of("snapshot: 1/4 MiB", 0.25))
    printer.say(ProgressLine.of("snapshot: 4/4 MiB", 1.0))
    printer.say("registered ami-1")
    text = out.getvalue()
    assert text.startswith("writing web.raw\n\r[######..................] snapshot: 1/4 MiB")
    assert "\r[########################] snapshot: 4/4 MiB\x1b[K\nregistered ami-1\n" in text
    plain = io.StringIO()
    ProgressPrinter(plain).say(ProgressLine.of("snapshot: 1/4 MiB", 0.25))
    assert plain.getvalue() == "snapshot: 1/4 MiB\n"  # not a terminal: plain lines
