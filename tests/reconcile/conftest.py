"""Fixtures for the reconcile tests (helpers live in reconcile_world.py): a world over the SQLite
journal by default; ``@pytest.mark.parametrize("world", ["sqlite", "etcd"], indirect=True)`` runs
a test over both stores (etcd: a real 3-member cluster shared by the session, a fresh prefix per
test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster
from reconcile_world import World


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster.create(tmp_path_factory.mktemp("etcd"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_url(request: pytest.FixtureRequest) -> str:
    cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
    return cluster.url(f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    kind = getattr(request, "param", "sqlite")
    w = World(tmp_path, etcd=request.getfixturevalue("etcd_url") if kind == "etcd" else "")
    yield w
    w.close()
