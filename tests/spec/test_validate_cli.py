"""``provision validate``: exit 0 on a good spec, 2 on a bad one, located lines, --json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from provision.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "linuxkit"
INVALID = Path(__file__).resolve().parent / "invalid"

Write = Callable[[str, str], Path]


def test_good_spec_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLES / "full.yml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "4 services" in out


def test_bad_spec_exits_2_with_one_line_per_problem(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(
        "bad.yml",
        "services:\n  - name: a\n    image: busybox:1\n"
        "    capabilities: [CAP_CHOWN, CAP_BOGUS]\n    pid: nope\n",
    )
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "provision: error: 2 problems in spec"
    assert err[1] == (f"{spec}:4:31: services[0].capabilities[1]: unknown capability 'CAP_BOGUS'")
    assert (
        err[2] == f"{spec}:5:10: services[0].pid: bad namespace 'nope': host, root, new or a path"
    )


def test_json_report(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--json", str(INVALID / "files-dotdot.yml")]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "valid": False,
        "problems": [
            {
                "file": str(INVALID / "files-dotdot.yml"),
                "line": 3,
                "column": 11,
                "key": "files[0].path",
                "message": "path '../../etc/shadow' leaves the image root",
            }
        ],
    }
    assert (
        main(["validate", "--json", str(EXAMPLES / "base.yml"), str(EXAMPLES / "overlay.yml")]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True and report["problems"] == []
    assert [s["name"] for s in report["spec"]["services"]] == ["rngd", "web"]


def test_validate_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["validate"])
    assert caught.value.code == 2
