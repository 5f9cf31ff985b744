"""provision plan / apply / status from the command line, on a file-backed simulated cloud."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provision.cli import main
from provision.providers.simulated.persistence import load_cloud, save_cloud

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yml"
    shutil.copy(ROOT / "examples" / "cluster-simulated.yml", path)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_example_plans_applies_and_reaches_a_fixpoint(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "plan", str(cluster), "--detailed-exitcode")
    assert code == 2
    assert "Plan: 6 to create, 0 to replace, 0 to destroy." in out
    code, out, _ = run(capsys, "apply", str(cluster), "--interval", "0")
    assert code == 0 and "Apply complete" in out
    code, out, _ = run(capsys, "plan", str(cluster), "--detailed-exitcode")
    assert code == 0 and "No changes" in out
    code, out, _ = run(capsys, "status", str(cluster), "--json")
    status = json.loads(out)
    assert [(g["group"], g["available"], g["up_to_date"]) for g in status["groups"]] == [
        ("web", 3, 3),
        ("etcd", 3, 3),
    ]
    assert sorted(m["slot"] for m in status["groups"][1]["machines"]) == [
        "etcd-0",
        "etcd-1",
        "etcd-2",
    ]
    assert status["intents"] == {"done": 6}


def test_plan_json_names_the_trigger_and_apply_rolls_it(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "apply", str(cluster), "--interval", "0")
    cluster.write_text(cluster.read_text().replace("flavor: small", "flavor: large"))
    code, out, _ = run(capsys, "plan", str(cluster), "--json", "--detailed-exitcode")
    assert code == 2
    web = json.loads(out)["groups"][0]
    assert [c["action"] for c in web["changes"]] == ["replace"] * 3
    assert {c["reason"] for c in web["changes"]} == {'properties.flavor: "small" -> "large"'}
    code, _, _ = run(capsys, "apply", str(cluster), "--interval", "0")
    assert code == 0
    assert run(capsys, "plan", str(cluster), "--detailed-exitcode")[0] == 0


def test_a_saved_plan_is_refused_when_the_machines_changed(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "plan.json"
    assert run(capsys, "plan", str(cluster), "--out", str(saved))[0] == 0
    run(capsys, "apply", str(cluster), "--interval", "0")  # someone else applied meanwhile
    code, _, err = run(capsys, "apply", str(saved))
    assert code == 3 and "changed since this plan was made" in err
    # a fresh plan of a vanished machine applies, and only does what it showed
    state = str(tmp_path / ".demo-sim-cloud.json")
    cloud = load_cloud(state)
    victim = sorted(i.id for i in cloud.live({"provision-group": "web"}))[0]
    cloud.vanish(victim)
    save_cloud(cloud, state)
    assert run(capsys, "plan", str(cluster), "--out", str(saved))[0] == 0
    code, out, _ = run(capsys, "apply", str(saved), "--interval", "0")
    assert code == 0 and "1 to create" in out
    assert len(load_cloud(state).live()) == 6


def test_spec_errors_are_all_located(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "cluster: Demo\n"
        "groups:\n"
        "  - name: web\n"
        "    provider: sim\n"
        "    image: img\n"
        "    size: 2\n"
        "    members: [a]\n"
        "    update: {maxSurge: 0, maxUnavailable: 0, stratgy: rolling}\n"
        "    health: {startupTimeout: soon}\n"
    )
    code, _, err = run(capsys, "plan", str(bad))
    assert code == 2
    assert f"{bad}:1:10: cluster: must be 1-32 lowercase" in err
    assert f"{bad}:3:5: groups[0]: give either size (cattle) or members (pets), not both" in err
    assert f"{bad}:8:46: groups[0].update.stratgy: unknown key (did you mean 'strategy'?)" in err
    assert "groups[0].update: maxSurge and maxUnavailable cannot both be 0" in err
    assert f"{bad}:9:30: groups[0].health.startupTimeout: must be a duration" in err


def test_a_saved_plan_applies_to_the_same_journal_and_cloud_from_any_directory(
    cluster: Path, tmp_path: Path
) -> None:
    """The plan names the spec and the journal by absolute path: applying it from elsewhere does
    not start a second journal (and a second set of machines) in the current directory."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    made = subprocess.run(
        [sys.executable, "-m", "provision", "plan", cluster.name, "--out", "plan.json"],
        cwd=cluster.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    applied = subprocess.run(
        [
            sys.executable,
            "-m",
            "provision",
            "apply",
            str(cluster.parent / "plan.json"),
            "--interval",
            "0",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert applied.returncode == 0, applied.stderr
    assert list(elsewhere.iterdir()) == []  # no journal, no cloud state here
    assert len(load_cloud(str(cluster.parent / ".demo-sim-cloud.json")).live()) == 6
    assert run_plan_exit(cluster) == 0


def run_plan_exit(cluster: Path) -> int:
    return main(["plan", str(cluster), "--detailed-exitcode"])
