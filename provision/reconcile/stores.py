"""Opening the journal a cluster names: a SQLite file, or etcd (``etcd://HOST:PORT,.../PREFIX``),
chosen by ``--journal`` or the spec's ``journal:`` key."""

from __future__ import annotations

from pathlib import Path

from provision.reconcile.etcd.location import is_etcd_url, parse_etcd_location
from provision.reconcile.etcd.store import EtcdStore
from provision.reconcile.journal import SqliteStore
from provision.reconcile.spec import ClusterSpec

AnyStore = SqliteStore | EtcdStore


def open_journal(text: str, base: Path | None = None) -> AnyStore:
    """A journal by its name on the command line: an etcd URL or a SQLite file."""
    if is_etcd_url(text):
        return EtcdStore(parse_etcd_location(text, base))
    return SqliteStore(Path(text))


def open_store(spec: ClusterSpec, override: str | None = None) -> AnyStore:
    """The journal ``--journal`` names, else the spec's (relative files resolve against the spec)."""
    if override:
        return open_journal(override)
    if spec.journal_url:
        base = Path(spec.source_file).parent if not spec.source_file.startswith("<") else None
        return EtcdStore(parse_etcd_location(spec.journal_url, base))
    return SqliteStore(spec.journal)


def describe_store(store: AnyStore) -> str:
    """Where the journal is (no secret): a resolved path or an etcd URL."""
    return store.describe() if isinstance(store, EtcdStore) else str(store.path.resolve())
