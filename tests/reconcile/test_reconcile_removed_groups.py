"""Groups removed from the spec: their machines are destroyed through the journal (never leaked),
a spec that removes every group is refused unless told, and ``down`` finds every machine of the
cluster on every provider the spec or the journal ever used."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from reconcile_world import BOTH_STORES, World, make_spec

from provision.cli import main
from provision.providers.simulated.cloud import SimulatedCloud
from provision.providers.simulated.persistence import load_cloud
from provision.providers.simulated.server import serve_simulated_cloud
from provision.reconcile.daemon import Daemon, DaemonOptions
from provision.reconcile.engine import REMOVED, DestroyAllRefusedError
from provision.reconcile.journal import SqliteStore
from provision.reconcile.provider import TAG_CLUSTER, TAG_JOURNAL
from provision.reconcile.spec import parse_cluster_spec

ROOT = Path(__file__).resolve().parents[2]
DB = "  - {name: db, provider: sim, image: img-1, members: [a, b]}\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_removed_group_is_planned_destroyed_through_the_journal_and_retired(world: World) -> None:
    both = make_spec(2, extra_groups=DB)
    world.engine(both).converge(between=world.step(3))
    db = world.owned("db")
    assert len(db) == 2
    engine = world.engine(make_spec(2))
    plan = engine.plan()
    [removed] = [g for g in plan.groups if g.group == "db"]
    assert (
        removed.removed
        and [(c.action, c.reason) for c in removed.changes] == [("destroy", REMOVED)] * 2
    )
    assert plan.has_changes
    engine.converge(between=world.step(3))
    assert world.owned("db") == [] and len(world.owned("web")) == 2
    db_file = sqlite3.connect(world.journal)
    done = db_file.execute(
        "SELECT instance_id, reason FROM intents WHERE op='destroy' AND state='done'"
    ).fetchall()
    db_file.close()
    assert sorted(done) == sorted(
        (i.id, REMOVED) for i in db
    )  # every destroy went through the journal
    assert "db" not in engine.store.groups_seen("demo")  # retired once empty
    after = engine.plan()
    assert not after.has_changes and [g.group for g in after.groups] == ["web"]


@BOTH_STORES
def test_a_spec_that_removes_every_group_is_refused_unless_allowed(world: World) -> None:
    world.engine(make_spec(3)).converge(between=world.step(3))
    before = {i.id for i in world.owned()}
    renamed = parse_cluster_spec(
        "cluster: demo\nproviders:\n  sim: {type: simulated}\ngroups:\n  - {name: www, provider: sim, image: img-1, size: 1}\n",
        "<test>",
    )
    engine = world.engine(renamed)
    assert any("removes every group" in note for g in engine.plan().groups for note in g.notes)
    with pytest.raises(DestroyAllRefusedError, match="web \\(3 machines\\)"):
        engine.reconcile()
    assert {i.id for i in world.owned()} == before and world.owned("www") == []
    world.engine(renamed, allow_destroy_all=True).converge(between=world.step(3))
    assert world.owned() == [] and len(world.owned("www")) == 1


def test_the_daemon_refuses_a_spec_that_removes_every_group_before_taking_the_lease(
    world: World,
) -> None:
    world.engine(make_spec(2)).converge(between=world.step(3))
    epoch = world.stores[0].current_epoch("demo")
    renamed = parse_cluster_spec(
        "cluster: demo\nproviders:\n  sim: {type: simulated}\ngroups:\n  - {name: www, provider: sim, image: img-1, size: 1}\n",
        "<test>",
    )
    store = SqliteStore(world.journal)
    world.stores.append(store)
    from provision.providers.simulated.cloud import SimulatedProvider

    daemon = Daemon(
        renamed,
        {"sim": SimulatedProvider(world.cloud, "sim")},
        store,
        world.clock,
        DaemonOptions(0.1, 1.0, None),
    )
    with pytest.raises(DestroyAllRefusedError, match="refusing to destroy them all"):
        daemon.run()
    assert store.current_epoch("demo") == epoch and len(world.owned()) == 2


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yml"
    shutil.copy(ROOT / "examples" / "cluster-simulated.yml", path)
    return path


def without_etcd(text: str) -> str:
    return text[: text.index("  # pets:")] + text[text.index("daemon:") :]


def test_cli_plan_exits_2_while_a_removed_group_has_machines_and_apply_destroys_them(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "apply", str(cluster), "--interval", "0")[0] == 0
    cluster.write_text(without_etcd(cluster.read_text()))
    code, out, _ = run(capsys, "status", str(cluster))
    assert code == 0 and "group etcd  removed from the spec: 3 machine(s) left to destroy" in out
    code, out, _ = run(capsys, "plan", str(cluster), "--detailed-exitcode")
    assert code == 2
    assert "group etcd  provider=sim  (removed from the spec)" in out
    assert out.count("destroy  etcd-") == 3 and out.count(REMOVED) == 3
    assert "Plan: 0 to create, 0 to replace, 3 to destroy." in out
    assert run(capsys, "apply", str(cluster), "--interval", "0")[0] == 0
    assert run(capsys, "plan", str(cluster), "--detailed-exitcode")[0] == 0
    state = load_cloud(str(cluster.parent / ".demo-sim-cloud.json"))
    assert sorted(i.tags["provision-group"] for i in state.live()) == ["web"] * 3


def test_cli_apply_removes_every_group_only_with_allow_destroy_all(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "apply", str(cluster), "--interval", "0")[0] == 0
    text = cluster.read_text()
    cluster.write_text(text.replace("name: web", "name: www").replace("name: etcd", "name: quorum"))
    code, _, err = run(capsys, "apply", str(cluster), "--interval", "0")
    assert (
        code == 1
        and "removes every group of cluster 'demo' that has machines: etcd (3 machines), web (3 machines)"
        in err
    )
    assert "Traceback" not in err
    state = str(cluster.parent / ".demo-sim-cloud.json")
    assert len(load_cloud(state).live()) == 6
    assert run(capsys, "apply", str(cluster), "--interval", "0", "--allow-destroy-all")[0] == 0
    assert (
        sorted(i.tags["provision-group"] for i in load_cloud(state).live())
        == ["quorum"] * 3 + ["www"] * 3
    )


TWO_PROVIDERS = """
cluster: demo
journal: journal.db
providers:
  pa: {{type: simulated, options: {{state: pa.json}}}}
{pb}
groups:
  - {{name: web, provider: pa, image: img-1, size: 2}}
{db}
"""
PB_FILE = "  pb: {type: simulated, options: {state: pb.json}}"
DB_ON_PB = "  - {name: db, provider: pb, image: img-1, size: 2}"


def test_down_finds_the_machines_of_a_provider_the_spec_no_longer_declares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probe's case: machines on pb while the spec has no group (here not even the provider)
    there; down must find them through what the journal recorded, and destroy them through it."""
    spec = tmp_path / "cluster.yml"
    spec.write_text(TWO_PROVIDERS.format(pb=PB_FILE, db=DB_ON_PB))
    assert run(capsys, "apply", str(spec), "--interval", "0")[0] == 0
    pb = [i.id for i in load_cloud(str(tmp_path / "pb.json")).live()]
    assert len(pb) == 2
    spec.write_text(TWO_PROVIDERS.format(pb="", db=""))
    code, out, err = run(capsys, "down", str(spec))
    assert code == 0, err
    assert "4 machines destroyed, none left" in out
    assert (
        load_cloud(str(tmp_path / "pa.json")).live() == []
        and load_cloud(str(tmp_path / "pb.json")).live() == []
    )
    db = sqlite3.connect(tmp_path / "journal.db")
    destroyed = {
        r[0]
        for r in db.execute("SELECT instance_id FROM intents WHERE op='destroy' AND state='done'")
    }
    db.close()
    assert set(pb) <= destroyed  # through the journal, not behind its back


def test_down_sweeps_cluster_machines_no_group_or_journal_knows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "cluster.yml"
    spec.write_text(TWO_PROVIDERS.format(pb=PB_FILE, db=""))
    assert run(capsys, "apply", str(spec), "--interval", "0")[0] == 0
    from provision.providers.simulated.persistence import save_cloud

    state = str(tmp_path / "pb.json")
    cloud = load_cloud(state)
    stray = cloud.add_foreign("stray", {TAG_CLUSTER: "demo", "provision-group": "gone"})
    other = cloud.add_foreign("other", {TAG_CLUSTER: "prod"})
    save_cloud(cloud, state)
    code, out, err = run(capsys, "down", str(spec))
    assert code == 0, err
    assert f"destroy {stray.id} (gone, running) on pb" in err
    assert [i.id for i in load_cloud(state).live()] == [other.id]  # another cluster's machine stays


def test_down_names_what_it_left_on_a_provider_it_cannot_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = SimulatedCloud(page_size=50)
    server = serve_simulated_cloud(sim)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    spec = tmp_path / "cluster.yml"
    http = f'  pb: {{type: simulated-http, options: {{url: "{url}"}}}}'
    spec.write_text(TWO_PROVIDERS.format(pb=http, db=DB_ON_PB))
    assert run(capsys, "apply", str(spec), "--interval", "0")[0] == 0
    left = sorted(i.id for i in sim.live())
    server.shutdown()
    server.server_close()  # pb is unreachable from here on
    spec.write_text(TWO_PROVIDERS.format(pb=http, db=""))
    code, out, err = run(capsys, "down", str(spec), "--timeout", "1")
    assert code == 1
    assert "cluster demo is not down: 2 destroyed, left: provider pb not reachable" in err
    assert f"the journal knows 2 machine(s) there: {', '.join(left)}" in err
    assert "none left" not in out and "Traceback" not in err
    assert load_cloud(str(tmp_path / "pa.json")).live() == []


def test_machines_carry_their_journal_and_another_journal_must_adopt_them(
    world: World, tmp_path: Path
) -> None:
    spec = make_spec(2)
    first = world.engine(spec)
    first.converge(between=world.step(3))
    assert {i.tags[TAG_JOURNAL] for i in world.owned()} == {first.store.identity()}
    other = SqliteStore(tmp_path / "other.db")
    world.stores.append(other)
    from provision.providers.simulated.cloud import SimulatedProvider
    from provision.reconcile.engine import Engine, ForeignJournalError

    world.cloud.vanish(world.owned()[0].id)  # work to do, for whoever may do it
    world.clock.advance(1)
    intruder = Engine(
        spec, {"sim": SimulatedProvider(world.cloud, "sim")}, other, world.clock, owner="b"
    )
    intruder.acquire()
    with pytest.raises(ForeignJournalError, match=first.store.identity()):
        intruder.reconcile()
    assert (
        len(world.owned()) == 1 and other.pending_intents("demo") == []
    )  # refused before any call
    assert any("another journal" in n for g in intruder.plan().groups for n in g.notes)
    adopter = Engine(
        spec,
        {"sim": SimulatedProvider(world.cloud, "sim")},
        other,
        world.clock,
        owner="b",
        adopt=True,
    )
    adopter.acquire()
    adopter.converge(between=world.step(3))
    assert len(world.owned()) == 2
    again = Engine(
        spec, {"sim": SimulatedProvider(world.cloud, "sim")}, other, world.clock, owner="b"
    )
    again.acquire()
    assert all(r.converged for r in again.reconcile())  # the adoption is remembered


def test_up_also_destroys_a_removed_group(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "up", str(cluster), "--interval", "0", "-q")[0] == 0
    cluster.write_text(without_etcd(cluster.read_text()))
    code, out, err = run(capsys, "up", str(cluster), "--interval", "0", "-q")
    assert code == 0, err
    assert "Cluster demo is up: 3 machines healthy" in out
    state = load_cloud(str(cluster.parent / ".demo-sim-cloud.json"))
    assert sorted(i.tags["provision-group"] for i in state.live()) == ["web"] * 3


def test_machine_ids_that_collide_across_providers_do_not_clobber_each_other(
    tmp_path: Path,
) -> None:
    """Two clouds number their machines alike (i-00000001 on both); with lagging lists the
    journal must keep each group's machines apart, or a group loses sight of one and makes a
    duplicate."""
    from provision.clock import FakeClock
    from provision.providers.simulated.cloud import Faults, SimulatedProvider
    from provision.reconcile.engine import Engine

    clock = FakeClock()
    pa, pb = (SimulatedCloud(clock, Faults(list_lag=3), page_size=2) for _ in range(2))
    spec = parse_cluster_spec(
        "cluster: demo\nproviders:\n  pa: {type: simulated}\n  pb: {type: simulated}\ngroups:\n"
        "  - {name: web, provider: pa, image: img-1, size: 3}\n  - {name: db, provider: pb, image: img-1, size: 3}\n",
        "<test>",
    )
    store = SqliteStore(tmp_path / "journal.db")
    engine = Engine(
        spec, {"pa": SimulatedProvider(pa, "pa"), "pb": SimulatedProvider(pb, "pb")}, store, clock
    )
    engine.acquire()
    engine.converge(max_passes=50, between=lambda _n: clock.advance(2))
    assert {i.id for i in pa.live()} == {i.id for i in pb.live()}  # the ids do collide
    assert (len(pa.live()), len(pb.live())) == (3, 3)
    assert pa.stats.creates == 3 and pb.stats.creates == 3  # and no duplicate was made
    store.close()


OLD_SCHEMA = """
CREATE TABLE instances (
  instance_id TEXT PRIMARY KEY, cluster TEXT NOT NULL, grp TEXT NOT NULL, slot TEXT NOT NULL,
  config TEXT NOT NULL, image TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL,
  created_at REAL NOT NULL, destroyed_at REAL);
CREATE INDEX instances_group ON instances (cluster, grp);
CREATE TABLE health (cluster TEXT, grp TEXT, instance_id TEXT, since REAL NOT NULL, PRIMARY KEY (cluster, instance_id));
CREATE TABLE leases (cluster TEXT PRIMARY KEY, owner TEXT, epoch INTEGER NOT NULL, expires REAL NOT NULL);
INSERT INTO instances VALUES ('i-1', 'demo', 'web', '00001', 'c', 'img', 'n', 'k', 5.0, NULL);
INSERT INTO health VALUES ('demo', 'web', 'i-1', 7.0);
INSERT INTO leases VALUES ('demo', NULL, 4, 0);
"""


def test_a_journal_from_before_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.close()
    store = SqliteStore(path)
    assert [k.instance_id for k in store.known_instances("demo", "web")] == ["i-1"]
    assert store.unhealthy_since("demo", "web") == {"i-1": 7.0}
    assert store.acquire_lease("demo", "me", 15.0, 100.0) == 5  # the epoch continues
    store.close()
    db = sqlite3.connect(path)
    key = [
        r[1]
        for r in sorted(
            (r for r in db.execute("PRAGMA table_info(instances)") if r[5]), key=lambda r: r[5]
        )
    ]
    db.close()
    assert key == ["cluster", "grp", "instance_id"]
