"""A build SIGKILLed anywhere leaves the output directory with the complete previous outputs
or the complete new ones, never a mix, and the next build of the name clears its debris.

Kill points: a seeded sample of every line the publishing code (provision/publish.py)
executes (the child process kills itself when its tracer reaches the chosen line event),
plus seeded random moments of whole builds. Builds alternate between two specs with
different outputs (other contents, other formats), starting from outputs an older provision
wrote as regular files."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from build_testkit import SPEC, offline_build_argv

from provision.build import build_image
from provision.errors import UsageError
from provision.oci.store import ImageStore
from provision.publish import BuildBusyError, OutputSlot

NAME = "machine"
FORMATS = {"a": "kernel+initrd,tar", "b": "kernel+initrd,tar-kernel-initrd"}
# argv[1]: kill at that line event of provision/publish.py (0: never), or "call:NAME": when
# a function NAME of it is entered
CHILD = """\
import os, signal, sys
from provision.cli import main
where = sys.argv[1]
kill_at = 0 if where.startswith("call:") else int(where)
count = 0
def lines(frame, event, arg):
    global count
    if event == "line":
        count += 1
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return lines
def calls(frame, event, arg):
    if not frame.f_code.co_filename.endswith("provision/publish.py"):
        return None
    if where == "call:" + frame.f_code.co_name:
        os.kill(os.getpid(), signal.SIGKILL)
    return lines
sys.settrace(calls)
code = main(sys.argv[2:])
sys.settrace(None)
print("LINE-EVENTS", count)
sys.exit(code)
"""

State = dict[str, bytes]


def write_specs(root: Path) -> dict[str, Path]:
    specs = {}
    for variant in FORMATS:
        path = root / variant / f"{NAME}.yml"
        path.parent.mkdir(parents=True)
        path.write_text(SPEC.replace('contents: "hello\\n"', f'contents: "hello {variant}\\n"'))
        specs[variant] = path
    return specs


def argv(store: ImageStore, spec: Path, variant: str, out: Path) -> list[str]:
    return offline_build_argv(
        store,
        "-f",
        FORMATS[variant],
        "--name",
        NAME,
        "-o",
        str(out),
        str(spec),
    )


def run_child(
    kill_at: int | str, args: list[str], *, kill_after: float | None = None
) -> subprocess.CompletedProcess[str] | None:
    """Run the build in a child; None when it was killed (by itself or after kill_after s)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(kill_at), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_after is not None:
        try:
            child.wait(kill_after)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=300)
    if child.returncode == -signal.SIGKILL:
        return None
    assert child.returncode == 0, err
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def observe(out: Path) -> State:
    """What a user sees: every visible name that resolves, with its bytes."""
    return {
        p.name: p.read_bytes()
        for p in sorted(out.iterdir())
        if not p.name.startswith(".") and p.exists()
    }


def test_a_build_killed_anywhere_leaves_old_or_new_outputs_never_a_mix(
    image_store: ImageStore, tmp_path: Path
) -> None:
    specs = write_specs(tmp_path / "specs")
    reference: dict[str, State] = {}
    for variant, spec in specs.items():
        ref_out = tmp_path / f"ref-{variant}"
        build_image(
            [spec],
            store=image_store,
            outdir=ref_out,
            formats=FORMATS[variant],
            name=NAME,
            pull="never",
        )
        reference[variant] = observe(ref_out)
    assert set(reference["a"]) != set(reference["b"])
    assert reference["a"][f"{NAME}.manifest.json"] != reference["b"][f"{NAME}.manifest.json"]

    out = tmp_path / "out"
    out.mkdir()
    for name, data in reference["a"].items():  # outputs of an older provision: regular files
        (out / name).write_bytes(data)
    done = run_child(0, argv(image_store, specs["b"], "b", tmp_path / "count"))
    assert done is not None
    line_events = int(done.stdout.split("LINE-EVENTS")[1])
    assert line_events > 20

    rng = random.Random(20261201)
    points = sorted(rng.sample(range(1, line_events + 1), 14))
    seen = {"a": 0, "b": 0}
    previous = "a"
    kills = 0
    for step, point in enumerate(points + [0] * 6):
        target = "b" if previous == "a" else "a"
        args = argv(image_store, specs[target], target, out)
        if point:
            result = run_child(point, args)
        else:  # a random moment of the whole build (python start-up included)
            result = run_child(0, args, kill_after=rng.uniform(0.2, 2.5))
        kills += result is None
        state = observe(out)
        matches = [v for v in (previous, target) if state == reference[v]]
        assert matches, f"kill {step} (line event {point}): a mix of outputs: {sorted(state)}"
        previous = matches[0]
        seen[previous] += 1
    assert kills >= 12
    assert seen["a"] and seen["b"]  # some kills came after the switch, some before

    # the next build clears the debris of every killed one
    final = "b" if previous == "a" else "a"
    build_image(
        [specs[final]],
        store=image_store,
        outdir=out,
        formats=FORMATS[final],
        name=NAME,
        pull="never",
    )
    assert observe(out) == reference[final]
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert len(hidden) == 2 and hidden[0] == f".{NAME}.current", hidden
    assert hidden[1] == os.readlink(out / f".{NAME}.current")
    visible = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert all(p.is_symlink() and p.exists() for p in visible)


def test_a_live_build_keeps_its_work_and_a_second_build_is_refused(
    image_store: ImageStore, spec_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    slot = OutputSlot(out, NAME).open()  # a live build of NAME holds the slot
    try:
        assert slot.work is not None and slot.work.is_dir()
        with pytest.raises(
            BuildBusyError, match=f"another build of {NAME} \\(pid {os.getpid()}\\)"
        ):
            build_image([spec_file], store=image_store, outdir=out, formats="tar", pull="never")
        assert slot.work.is_dir()  # the refused build did not clear it
    finally:
        slot.close()
    assert list(out.iterdir()) == []
    # another name in the same directory is not held up
    build_image(
        [spec_file], store=image_store, outdir=out, formats="tar", name="other", pull="never"
    )


def test_work_of_a_sigkilled_build_is_removed_by_the_next(
    image_store: ImageStore, spec_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # killed as it starts to publish: its work directory is full, its lock file there
    assert run_child("call:publish", argv(image_store, spec_file, "a", out)) is None
    left = sorted(p.name for p in out.iterdir())
    assert any(n.startswith(f".{NAME}.build-") for n in left) and f".{NAME}.lock" in left
    unrelated = out / f".{NAME}.build-notmine"  # not a work directory's name: kept
    unrelated.mkdir()
    build_image([spec_file], store=image_store, outdir=out, formats="tar", name=NAME, pull="never")
    left = sorted(p.name for p in out.iterdir())
    assert [n for n in left if n.startswith(f".{NAME}.build-")] == [unrelated.name]
    assert f".{NAME}.lock" not in left and f"{NAME}.tar" in left
    shutil.rmtree(unrelated)


def test_a_directory_in_place_of_an_output_is_refused(
    image_store: ImageStore, spec_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / f"{NAME}.tar").mkdir(parents=True)
    with pytest.raises(
        UsageError, match="it is a directory, and an output may only replace a regular file"
    ):
        build_image([spec_file], store=image_store, outdir=out, formats="tar", pull="never")
    assert sorted(p.name for p in out.iterdir()) == [f"{NAME}.tar"]
