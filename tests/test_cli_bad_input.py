"""No traceback, ever: every subcommand, found by walking the argparse parser (a new command is
covered without editing this file), is run with a corpus of bad arguments: missing files,
directories, /dev/null, /dev/zero, FIFOs, garbage, deep nesting, bad numbers, outputs in
missing directories or on devices. Each run must end within a few seconds with exit 1 or 2,
nothing on stdout's behalf of an error, and exactly one error line on stderr (``hint:`` lines
aside): never a traceback, never an internal error.

Each case runs ``provision.cli.main`` in a forked child (a fresh process state per case, at
the cost of a fork instead of an interpreter start), with its own stdio, a hard time limit,
and $HOME, caches and state directories in a temporary directory.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provision.cli import build_parser, main, run_handler

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 10.0  # seconds before a case is killed (a hang is a failure)
SLOW = 8.0  # a case slower than this fails too: refusing bad input is quick (a pull from a closed
# port takes ~3.4 s: five connection attempts with back-off; twice that under load)

ERROR_LINE = re.compile(r"provision( [a-z-]+)*: error: \S.*")
SPEC_ERRORS = re.compile(r"provision: error: (\d+) problems in spec")
PROBLEM = re.compile(r"\S+?(:\d+:\d+)?: \S.*")  # file:line:column: key: message

GOOD_CLUSTER = """\
cluster: bad-input
journal: journal.db
providers:
  sim:
    type: simulated
    options: {state: sim-cloud.json}
groups:
  - name: web
    provider: sim
    image: img-1
    size: 1
daemon:
  listen: 127.0.0.1:0
"""


@dataclass(frozen=True)
class Inputs:
    """The files the corpus names, made once per test in a temporary directory."""

    tmp: Path

    def path(self, name: str) -> str:
        return str(self.tmp / name)


def make_inputs(tmp: Path) -> Inputs:
    (tmp / "home").mkdir()
    (tmp / "empty-dir").mkdir()
    os.mkfifo(tmp / "fifo")
    # Device nodes to write to live here, never the host's own /dev/null and /dev/full: a
    # regression must not replace the machine's device nodes (it did once).
    os.mknod(tmp / "null-device", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(tmp / "full-device", stat.S_IFCHR | 0o666, os.makedev(1, 7))
    (tmp / "garbage").write_bytes(bytes(range(256)) * 16)
    (tmp / "words").write_text("this is not what was asked for\n")
    (tmp / "empty").write_text("")
    (tmp / "nul.yml").write_bytes(b"cluster: x\x00\n")
    (tmp / "deep.yml").write_text("a: " + "[" * 500 + "]" * 500 + "\n")
    (tmp / "latin1.yml").write_bytes(b"cluster: caf\xe9\n")
    (tmp / "python-tag.yml").write_text("services: !!python/object/apply:os.system [ls]\n")
    (tmp / "plan-nonsense.json").write_text(
        '{"format": "provision.plan/v1", "groups": [{"changes": "x"}]}\n'
    )
    (tmp / "good-cluster.yml").write_text(GOOD_CLUSTER)
    return Inputs(tmp)


# -- the corpus, by kind of argument ----------------------------------------------------------


def corpus(kind: str, inputs: Inputs) -> list[str]:
    p = inputs.path
    hostile_files = [
        p("missing.yml"),
        p("empty-dir"),
        "/dev/null",
        "/dev/zero",
        p("fifo"),
        p("garbage"),
        p("words"),
        p("empty"),
        p("nul.yml"),
        p("deep.yml"),
        p("latin1.yml"),
        p("python-tag.yml"),
    ]
    table = {
        "input": hostile_files + [p("plan-nonsense.json")],
        "data": [
            p("missing"),
            p("empty-dir"),
            "/dev/zero",
            p("fifo"),
        ],  # any bytes are valid user data
        "output-file": [
            p("missing-dir/out.json"),
            p("empty-dir"),
            p("null-device"),
            p("full-device"),
            p("fifo"),
            p("garbage/out.json"),
            "/proc/out.json",
        ],
        "output-dir": [p("garbage"), p("null-device"), p("fifo")],
        "directory": [p("garbage"), p("null-device"), p("fifo")],
        "journal": [
            p("empty-dir"),
            p("null-device"),
            p("fifo"),
            p("garbage"),
            p("words"),
            "/proc/journal.db",
            p("garbage/journal.db"),
        ],
        "number": ["x", "-5", "nan", "inf", "1e999", ""],
        "choice": ["bogus"],
        "listen": ["bogus", "127.0.0.1:99999", "127.0.0.1:x"],
        "image-ref": ["UPPER/Case:1", "a b", "", "x@sha256:zz", "/dev/zero"],
        "name": ["../escape", "a/b", ""],
        "vm-name": ["../escape", "no-such-vm"],
        "format": ["bogus", ",", ""],
        "platform": ["bogus", "linux/", "", "a/b/c/d"],
        "compression": ["bogus", "gzip:99", "zstd:x", ""],
        "publish": ["x", "99999:80", "80:0/sctp"],
        "disk": ["", "x,format=bogus", "x,size=-5"],
        "tag": ["novalue", "=x"],
        "ip": ["bogus", "999.1.1.1", ""],
        "ip-range": ["x", "10.0.0.9-10.0.0.1", "10.0.0.1-"],
    }
    return table[kind]


# What each argument is, by destination (first by "command dest", then by dest alone). An
# argument that is neither here, nor typed (a number or a choice), fails the test: classify it.
KINDS = {
    "cluster": "input",
    "specs": "input",
    "file": "input",
    "artifact": "input",
    "recipes": "input",
    "sources": "input",
    "data_file": "data",
    "out": "output-file",
    "cache export output": "output-file",
    "build outdir": "output-dir",
    "cache": "directory",
    "debs": "directory",
    "root": "directory",
    "journal": "journal",
    "listen": "listen",
    "refs": "image-ref",
    "ref": "image-ref",
    "target": "image-ref",
    "push": "image-ref",
    "name": "name",
    "names": "vm-name",
    "format": "format",
    "platform": "platform",
    "compress": "compression",
    "size": "number",
    "boot_size": "number",
    "data_size": "number",
    "mem": "number",
    "parallel": "number",
    "publish": "publish",
    "disk": "disk",
    "tag": "tag",
    "lab": "input",
    "token_file": "input",
    "state": "directory",
    "tftp": "listen",
    "dhcp_listen": "ip",
    "boot_server": "ip",
    "dhcp_router": "ip",
    "dhcp_dns": "ip",
    "dhcp_pool": "ip-range",
}
# `provision push TARGET`: each target's own flags (providers/NAME/push_command.py)
PUSH_KINDS = {
    "push aws": {"boot_mode": "choice", "concurrency": "number"},
    "push azure": {
        "boot_mode": "choice",
        "security_type": "choice",
        "hyperv_generation": "choice",
        "concurrency": "number",
    },
    "push gcp": {"labels": "tag"},
}
for _push, _kinds in PUSH_KINDS.items():
    KINDS.update({f"{_push} {dest}": kind for dest, kind in _kinds.items()})
    KINDS.update(
        {
            f"{_push} source": "input",
            f"{_push} timeout": "number",
            f"{_push} request_timeout": "number",
        }
    )
# Free text with no bad value (anything is a valid owner, command line or user data).
FREE_TEXT = {
    "daemon owner",
    "run qemu cmdline",
    "run qemu data",
    # cloud names the cloud itself checks (a region, accounts, a bucket, an upload method)
    "push aws region",
    "push aws copy_to",
    "push aws share_with",
    "push aws method",
    "push aws bucket",
    "push gcp bucket",
    "push gcp project",
    "push gcp family",
    "push gcp guest_os_features",
    "push gcp storage_location",
    "push gcp endpoint",
    "push azure region",
    "push azure copy_to",
    "push azure subscription",
    "push azure resource_group",
    "push azure storage_account",
    "push azure storage_resource_group",
    "push azure container",
    "push azure gallery",
    "push azure gallery_image",
    "push azure version",
    "push azure replicas",
}


# The valid value an argument takes while another one is being tested. Commands that would
# reach the network or boot a machine get a missing input instead: they must fail anyway.
def baseline(command: str, dest: str, inputs: Inputs) -> str:
    if dest == "cluster":
        return inputs.path("good-cluster.yml")
    if command == "validate" and dest == "specs":
        return str(ROOT / "examples" / "linuxkit" / "base.yml")
    if dest in ("refs", "ref", "target"):
        return "127.0.0.1:1/not-cached:1"
    if dest == "output":
        return inputs.path("export.tar")
    return inputs.path("missing-input")


# -- walking the parser -----------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    parsers: tuple[argparse.ArgumentParser, ...]  # from the top-level parser to the leaf

    @property
    def name(self) -> str:
        return " ".join(self.words)


def walk(
    parser: argparse.ArgumentParser,
    words: tuple[str, ...] = (),
    chain: tuple[argparse.ArgumentParser, ...] = (),
) -> Iterator[Command]:
    chain = (*chain, parser)
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield Command(words, chain)
        return
    seen: set[int] = set()
    for name, sub in subparsers[0].choices.items():
        if id(sub) not in seen:  # aliases
            seen.add(id(sub))
            yield from walk(sub, (*words, name), chain)


COMMANDS = [c for c in walk(build_parser()) if c.words]


def value_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction | argparse._HelpAction)
        and a.nargs != 0
        and not isinstance(
            a, argparse._CountAction | argparse._StoreConstAction | argparse._VersionAction
        )
    ]


def kind_of(command: Command, action: argparse.Action) -> str | None:
    """The corpus kind of an argument; None for free text; raises when unclassified."""
    for key in (f"{command.name} {action.dest}", action.dest):
        if key in FREE_TEXT:
            return None
        if key in KINDS:
            return KINDS[key]
    if action.choices is not None:
        return "choice"
    if action.type in (int, float) or getattr(action.type, "__name__", "") in ("number", "integer"):
        return "number"
    raise AssertionError(
        f"classify {'/'.join(action.option_strings) or action.dest} of `provision {command.name}` "
        "in tests/test_cli_bad_input.py (KINDS or FREE_TEXT)"
    )


def cases(command: Command, inputs: Inputs) -> Iterator[list[str]]:
    """argv lists: each value-taking argument of each parser on the way, bad in turn, the rest
    at their baseline; plus an unknown option."""
    leaf = command.parsers[-1]
    positionals = [a for a in value_actions(leaf) if not a.option_strings]
    required = [a for a in value_actions(leaf) if a.option_strings and a.required]

    def argv(bad: argparse.Action | None, value: str, level: int) -> list[str]:
        words: list[str] = []
        for depth in range(len(command.parsers)):
            if bad is not None and depth == level and bad.option_strings:
                words += [bad.option_strings[-1], value]
            if depth < len(command.words):
                words.append(command.words[depth])
        for action in required:
            if action is not bad:
                words += [action.option_strings[-1], baseline(command.name, action.dest, inputs)]
        words.append("--")
        for action in positionals:
            words.append(value if action is bad else baseline(command.name, action.dest, inputs))
        if not positionals:
            words.pop()
        return words

    for level, parser in enumerate(command.parsers):
        for action in value_actions(parser):
            kind = kind_of(command, action)
            if kind is None:
                continue
            for value in corpus(kind, inputs):
                yield argv(action, value, level)
    yield [*command.words, "--no-such-option"]


# -- running one case in a forked child -------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int | None  # None: killed at the time limit
    out: str
    err: str
    seconds: float


def run_case(argv: list[str], inputs: Inputs) -> Outcome:
    out_path, err_path = inputs.tmp / "stdout", inputs.tmp / "stderr"
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.setsid()
            os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
            for handler in logging.root.handlers[:]:
                logging.root.removeHandler(handler)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
                signal.signal(sig, signal.SIG_DFL)
            home = inputs.tmp / "home"
            os.environ.update(
                {
                    "HOME": str(home),
                    "XDG_CACHE_HOME": str(home / "cache"),
                    "XDG_STATE_HOME": str(home / "state"),
                    "PROVISION_CACHE": str(home / "oci"),
                    "PROVISION_STATE": str(home / "vms"),
                }
            )
            os.chdir(inputs.tmp)
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # what the interpreter would print
            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(out_fd)
    os.close(err_fd)
    code: int | None = None
    while time.monotonic() - started < LIMIT:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.005)
    else:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    seconds = time.monotonic() - started
    return Outcome(
        code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), seconds
    )


def one_error(lines: list[str]) -> bool:
    """One error line; or a spec error's count of problems followed by that many located
    lines, one per problem (a spec's problems are all reported at once)."""
    if len(lines) == 1:
        return bool(ERROR_LINE.fullmatch(lines[0]))
    head = SPEC_ERRORS.fullmatch(lines[0]) if lines else None
    return (
        bool(head)
        and int(head.group(1)) == len(lines) - 1
        and all(PROBLEM.fullmatch(line) for line in lines[1:])
    )


def judge(argv: list[str], outcome: Outcome) -> str | None:
    """What is wrong with the outcome, or None."""
    shown = "provision " + " ".join(argv)
    if outcome.code is None:
        return f"{shown}: still running after {LIMIT:g}s"
    if "Traceback" in outcome.err or "Traceback" in outcome.out:
        return f"{shown}: a traceback:\n{outcome.err[-1500:]}"
    if outcome.code not in (1, 2):
        return f"{shown}: exit {outcome.code}, not 1 or 2 (stderr: {outcome.err[-300:]!r})"
    lines = [line for line in outcome.err.splitlines() if not line.startswith("hint: ")]
    if not one_error(lines):
        return f"{shown}: not one error line: {outcome.err[-600:]!r}"
    if "internal error" in lines[0]:
        return f"{shown}: an internal error (a bug the corpus found): {lines[0]}"
    if outcome.seconds > SLOW:
        return f"{shown}: took {outcome.seconds:.1f}s"
    return None


def test_every_command_is_walked() -> None:
    names = {c.name for c in COMMANDS}
    assert {
        "build",
        "validate",
        "plan",
        "apply",
        "daemon",
        "status",
        "up",
        "down",
        "cache ls",
        "cache import",
        "pkg build",
        "run qemu",
        "ps",
        "stop",
        "version",
    } <= names


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_bad_arguments_give_one_line_and_exit_1_or_2(command: Command, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    failures = []
    count = 0
    for argv in cases(command, inputs):
        count += 1
        problem = judge(argv, run_case(argv, inputs))
        if problem:
            failures.append(problem)
    assert count >= 1
    assert not failures, f"{len(failures)} of {count} cases failed:\n" + "\n".join(failures)


# -- the handler that turns what a command raises into one line -------------------------------


def raising(exc: BaseException) -> Callable[[argparse.Namespace], int]:
    def handler(_args: argparse.Namespace) -> int:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (
            FileNotFoundError(2, "No such file or directory", "/x/plan.json"),
            1,
            "provision: error: /x/plan.json: No such file or directory",
        ),
        (PermissionError(13, "Permission denied"), 1, "provision: error: Permission denied"),
        (
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
            2,
            "provision: error: text encoding error: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        ),
        (
            RecursionError("maximum recursion depth exceeded"),
            2,
            "provision: error: input nested too deeply",
        ),
        (KeyError("sim"), 1, "provision: error: internal error: KeyError: 'sim'"),
        (
            ValueError("first line\nsecond line"),
            1,
            "provision: error: internal error: ValueError: first line",
        ),
    ],
)
def test_what_a_command_raises_becomes_one_line(
    exc: BaseException, code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_handler(raising(exc), argparse.Namespace()) == code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[0] == line
    assert all(extra.startswith("hint: ") for extra in lines[1:])
    assert "Traceback" not in err


def test_the_traceback_of_an_internal_error_is_logged_at_debug_level(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.DEBUG, logger="provision"):
        assert run_handler(raising(KeyError("sim")), argparse.Namespace()) == 1
    assert any(record.exc_info and record.exc_info[0] is KeyError for record in caplog.records)
    assert "Traceback" not in capsys.readouterr().err


def provision_process(*argv: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(cwd)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "provision", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )
    return done, time.monotonic() - started


def test_the_real_command_prints_one_line_for_the_issue_cases(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    done, _ = provision_process(
        "plan", "good-cluster.yml", "--out", "missing-dir/plan.json", cwd=tmp_path
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "provision: error: cannot write missing-dir/plan.json: the directory missing-dir does not exist"
    ]
    for spec in ("fifo", "/dev/zero", "deep.yml"):
        for command in ("validate", "plan"):
            done, seconds = provision_process(command, spec, cwd=tmp_path)
            assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
            assert (
                len([line for line in done.stderr.splitlines() if not line.startswith("hint: ")])
                == 1
            )
            assert seconds < 10  # an interpreter start, then an immediate refusal


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    child = subprocess.Popen(
        [sys.executable, "-m", "provision", "plan", "good-cluster.yml", "--json", "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # `provision plan ... | head -0`
    err = child.stderr.read()
    assert child.wait(timeout=60) == 1
    assert err == b""


@pytest.mark.parametrize("token", ["fifo", "/dev/zero", "empty-dir", "missing"])
def test_serve_reads_its_token_file_bounded(token: str, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    path = token if token.startswith("/") else inputs.path(token)
    argv = [
        "serve",
        "--lab",
        str(ROOT / "examples" / "metal-lab.yml"),
        "--state",
        inputs.path("metal-state"),
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        path,
    ]
    outcome = run_case(argv, inputs)
    assert judge(argv, outcome) is None, judge(argv, outcome)
    assert f"--token-file {path}: " in outcome.err
