"""`provision journal export | import`: a cluster's journal moves from SQLite to etcd and back,
and the daemon carries on there: no machine refused as foreign, no fencing token lower than one
the cloud has seen, the converged state still a fixpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reconcile_world import World, make_spec

from provision.providers.simulated.cloud import SimulatedProvider
from provision.reconcile.engine import Engine
from provision.reconcile.etcd.location import parse_etcd_location
from provision.reconcile.etcd.store import EtcdStore
from provision.reconcile.journal import SqliteStore, Store
from provision.reconcile.transfer import JournalImportError, export_journal, import_journal

ROOT = Path(__file__).resolve().parents[2]


def _engine(world: World, store: Store, size: int) -> Engine:
    engine = Engine(
        make_spec(size),
        {"sim": SimulatedProvider(world.cloud, "sim")},
        store,
        world.clock,
        owner="moved",
    )
    engine.acquire()
    return engine


def _comparable(doc: dict[str, object]) -> dict[str, object]:
    clusters = json.loads(json.dumps(doc["clusters"]))
    for data in clusters.values():
        data.pop("epoch")
        data.pop("adopted")
        for key in ("intents", "instances", "health", "births", "groups", "providers"):
            data[key] = sorted(data[key], key=lambda r: json.dumps(r, sort_keys=True))
    return {"configs": sorted(doc["configs"], key=lambda c: c["config"]), "clusters": clusters}  # type: ignore[arg-type, index]


def test_a_journal_moves_from_sqlite_to_etcd_and_back(
    world: World, etcd_url: str, tmp_path: Path
) -> None:
    first = world.engine(make_spec(3))
    first.converge(between=world.step(3))
    first.release()
    assert isinstance(first.store, SqliteStore)
    exported = export_journal(first.store)
    etcd = EtcdStore(parse_etcd_location(etcd_url))
    assert import_journal(etcd, exported) == ["demo"]
    with pytest.raises(JournalImportError, match="already has cluster"):
        import_journal(etcd, exported)
    assert (
        _engine(world, EtcdStore(parse_etcd_location(etcd_url)), 3).plan().has_changes is False
    )  # no foreign machine
    moved = _engine(world, etcd, 5)
    assert moved.epoch > max(i["epoch"] for i in exported["clusters"]["demo"]["intents"])
    assert moved.plan().has_changes  # 3 -> 5
    moved.converge(between=world.step(3))  # grows on etcd: the cloud accepts its tokens
    assert len(world.owned()) == 5 and world.cloud.stats.refused_epoch == 0
    assert world.cloud.stats.creates == 5  # the three machines were kept, two added
    moved.release()
    back = export_journal(etcd)
    again = SqliteStore(tmp_path / "back.db")
    import_journal(again, back)
    assert _comparable(export_journal(again)) == _comparable(back)
    last = _engine(world, again, 5)
    assert last.epoch > moved.epoch
    assert last.plan().has_changes is False  # the fixpoint survived both moves
    assert last.converge(between=world.step(3)) == 1 and world.cloud.stats.creates == 5


def test_the_cli_pipes_an_export_into_an_import(
    world: World, etcd_url: str, tmp_path: Path
) -> None:
    world.engine(make_spec(2)).converge(between=world.step(3))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    exporter = subprocess.Popen(
        [sys.executable, "-m", "provision", "journal", "export", str(world.journal)],
        stdout=subprocess.PIPE,
        env=env,
    )
    importer = subprocess.run(
        [sys.executable, "-m", "provision", "journal", "import", etcd_url],
        stdin=exporter.stdout,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert exporter.wait() == 0 and importer.returncode == 0, importer.stderr
    assert importer.stderr.strip() == f"imported 1 cluster(s) into {etcd_url}: demo"
    store = EtcdStore(parse_etcd_location(etcd_url))
    assert set(store.birth_times("demo", "web")) == {i.id for i in world.owned()}
    again = subprocess.run(
        [sys.executable, "-m", "provision", "journal", "import", etcd_url, "-"],
        input=json.dumps(export_journal(store)),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert again.returncode != 0 and "already has cluster(s) demo; nothing imported" in again.stderr
    assert "Traceback" not in again.stderr
