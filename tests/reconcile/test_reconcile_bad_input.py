"""Bad input to the cluster commands: saved plans (strict, and portable across directories),
outputs and journals in places that cannot hold them, damaged provider state, a provider URL
that is not the API. Each is one located line with exit 1 or 2, and nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from provision.cli import main
from provision.errors import ProvisionError
from provision.reconcile.plan import ClusterPlan, check_plan_matches_spec
from provision.reconcile.spec import parse_cluster_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    path = tmp_path / "site" / "cluster.yml"
    path.parent.mkdir()
    shutil.copy(ROOT / "examples" / "cluster-simulated.yml", path)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line.startswith("hint: ")]


def test_a_saved_plan_applies_the_same_from_any_directory(
    cluster: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(cluster.parent)
    assert run(capsys, "plan", "cluster.yml", "--out", "plan.json")[0] == 0
    saved = json.loads((cluster.parent / "plan.json").read_text())
    assert saved["spec_file"] == str(cluster)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, _ = run(capsys, "apply", str(cluster.parent / "plan.json"), "--interval", "0")
    assert code == 0 and "Apply complete" in out
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # no journal or cloud state here
    assert (cluster.parent / ".demo-journal.db").is_file() and (
        cluster.parent / ".demo-sim-cloud.json"
    ).is_file()
    monkeypatch.chdir(cluster.parent)
    assert (
        run(capsys, "plan", "cluster.yml", "--detailed-exitcode")[0] == 0
    )  # that journal, that cloud


NONSENSE: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "action": (
        lambda p: p["groups"][0]["changes"][0].update(action="explode"),
        "groups[0].changes[0].action: must be one of create, replace, destroy, nothing",
    ),
    "negative-size": (
        lambda p: p["groups"][0].update(desired=-3),
        "groups[0].desired: must be a whole number",
    ),
    "count-as-text": (
        lambda p: p["groups"][0].update(observed="many"),
        "groups[0].observed: must be a whole number",
    ),
    "unknown-field": (lambda p: p.update(force=True), "force: unknown field"),
    "missing-field": (lambda p: p.pop("observed_digest"), "observed_digest: missing"),
    "edited-spec": (
        lambda p: p.update(spec_text=p["spec_text"] + "# edited\n"),
        "spec_text: does not match spec_digest",
    ),
    "relative-spec": (
        lambda p: p.update(spec_file="cluster.yml"),
        "spec_file: must be an absolute path",
    ),
    "bad-digest": (
        lambda p: p.update(observed_digest="sha256:xyz"),
        "observed_digest: 'sha256:xyz' is not of the form",
    ),
    "unknown-group": (
        lambda p: p["groups"][0].update(group="nope"),
        "groups[0].group: the spec has no group 'nope'",
    ),
    "other-cluster": (
        lambda p: p.update(cluster="other"),
        "cluster: 'other' is not the spec's cluster 'demo'",
    ),
    "changes-not-list": (
        lambda p: p["groups"][0].update(changes={"a": 1}),
        "groups[0].changes: must be a list",
    ),
    "wrong-format": (
        lambda p: p.update(format="provision.plan/v0"),
        "format: must be 'provision.plan/v1'",
    ),
}


@pytest.mark.parametrize("case", sorted(NONSENSE))
def test_a_saved_plan_with_nonsense_fields_is_refused(
    case: str, cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = cluster.parent / "plan.json"
    assert run(capsys, "plan", str(cluster), "--out", str(saved))[0] == 0
    body = json.loads(saved.read_text())
    change, message = NONSENSE[case]
    change(body)
    saved.write_text(json.dumps(body))
    code, out, err = run(capsys, "apply", str(saved), "--interval", "0")
    assert code == 2 and "Apply complete" not in out
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(
        f"provision: error: {saved}: not a valid saved plan: {message}"
    ), err
    assert not (cluster.parent / ".demo-sim-cloud.json").exists()  # nothing was created


def test_plan_out_is_checked_before_any_work(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(tmp_path / "fifo")
    device = (
        tmp_path / "null-device"
    )  # never the host's own /dev/null: a regression must not replace it
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    replace = "and an output may only replace a regular file"
    for out, why in [
        (
            tmp_path / "missing" / "plan.json",
            f"cannot write {tmp_path / 'missing' / 'plan.json'}: the directory {tmp_path / 'missing'} does not exist",
        ),
        (tmp_path, f"refusing to write {tmp_path}: it is a directory, {replace}"),
        (device, f"refusing to write {device}: it is a character device, {replace}"),
        (tmp_path / "fifo", f"refusing to write {tmp_path / 'fifo'}: it is a FIFO, {replace}"),
    ]:
        code, stdout, err = run(capsys, "plan", str(cluster), "--out", str(out))
        assert code == 2 and stdout == ""
        assert error_lines(err) == [f"provision: error: {why}"]
    assert not (cluster.parent / ".demo-journal.db").exists()  # refused before the journal opened
    assert not (tmp_path / "missing").exists() and (tmp_path / "fifo").is_fifo()


def test_journal_paths_that_cannot_be_a_journal(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(tmp_path / "fifo")
    os.mknod(
        tmp_path / "null-device", stat.S_IFCHR | 0o666, os.makedev(1, 3)
    )  # not the host's /dev/null
    (tmp_path / "garbage.db").write_bytes(b"not a database at all" * 100)
    for journal, why in [
        (tmp_path, "a directory"),
        (tmp_path / "fifo", "not a regular file"),
        (tmp_path / "null-device", "not a regular file"),
        (tmp_path / "garbage.db", "cannot use it as a journal database: file is not a database"),
        (Path("/proc/journal.db"), "cannot use it as a journal database"),
        (tmp_path / "garbage.db" / "x.db", f"cannot make its directory {tmp_path / 'garbage.db'}"),
    ]:
        code, _, err = run(capsys, "plan", str(cluster), "--journal", str(journal))
        assert code == 1
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith(
            f"provision: error: journal {journal}: {why}"
        ), err


@pytest.mark.parametrize("state", [b"garbage", b'{"counter": "x"}', b"[1, 2]", b'{"counter": 1}'])
def test_a_damaged_simulated_cloud_state_is_one_line(
    state: bytes, cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cluster.parent / ".demo-sim-cloud.json"
    path.write_bytes(state)
    code, _, err = run(capsys, "plan", str(cluster))
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(
        f"provision: error: simulated cloud state {path}: "
    ), err


@pytest.fixture
def not_the_api() -> Iterator[str]:
    """A web server on 127.0.0.1 that answers HTML, as a wrong URL would."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"<html>this is not the simulated cloud</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_simulated_http_url_that_is_not_the_api(
    not_the_api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "http.yml"
    spec.write_text(
        f"cluster: demo\njournal: j.db\nproviders:\n  h:\n    type: simulated-http\n"
        f"    options: {{url: '{not_the_api}/'}}\ngroups:\n  - {{name: web, provider: h, image: img, size: 1}}\n"
    )
    code, _, err = run(capsys, "plan", str(spec))
    assert code == 1
    assert error_lines(err) == [
        f"provision: error: list: {not_the_api} did not answer as the simulated cloud API (HTTP 200)"
    ]


HOSTILE_JSON: list[Any] = [
    None,
    True,
    -1,
    10**400,
    1.5,
    "",
    "x" * 5000,
    "/dev/zero",
    [],
    [None],
    {},
    {"a": 1},
]


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from json_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from json_paths(child, (*prefix, index))


def test_every_field_of_a_saved_plan_made_hostile_is_refused_or_harmless(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = cluster.parent / "plan.json"
    assert run(capsys, "plan", str(cluster), "--out", str(saved))[0] == 0
    original = json.loads(saved.read_text())
    crashes = []
    for path in json_paths(original):
        for value in HOSTILE_JSON:
            body = json.loads(json.dumps(original))
            parent = body
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = value
            try:
                plan = ClusterPlan.from_json(json.dumps(body), "plan.json")
                check_plan_matches_spec(
                    plan, parse_cluster_spec(plan.spec_text, plan.spec_file), "plan.json"
                )
            except ProvisionError:
                pass
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                crashes.append(
                    f"{'.'.join(map(str, path))} = {repr(value)[:20]}: {type(exc).__name__}: {exc}"[
                        :200
                    ]
                )
    assert not crashes, "\n".join(crashes[:20])
