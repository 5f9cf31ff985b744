"""The journal: desired specs, intents and leases, behind a Store Protocol.

Write-ahead discipline: an intent (with the idempotency key the provider call will carry) is
committed *before* each mutating call and its result *after* it. A crash anywhere leaves either
nothing, a pending intent (re-driven on restart with the same key, so the provider returns the
machine it already made), or a finished one. Nothing is leaked, nothing duplicated.

Fencing: each lease acquisition bumps the cluster's epoch. Every journal write checks, in the
same transaction, that the writer's epoch is still current, and every provider call carries the
epoch. An etcd Store maps this directly: the lease is an etcd lease on a leader key, the epoch is
that key's create_revision, and each write is a transaction guarded by
``create_revision(leader) == epoch``.

SQLite runs in WAL mode with ``synchronous=NORMAL``: durable across a crash of this process (the
failure the engine must survive); a power cut may lose the last commits, which the re-drive of
intents and the ownership tags on the machines still cover.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from provision.errors import ProvisionError
from provision.reconcile.provider import StaleEpochError


class LeaseHeldError(ProvisionError):
    """Another daemon holds the cluster's lease."""


@dataclass(frozen=True)
class Intent:
    """A mutating call, journaled before it is made."""

    key: str
    cluster: str
    group: str
    op: str  # "create" | "destroy"
    slot: str
    instance_id: str | None
    config: str
    reason: str
    request: str  # JSON of the create request (without epoch), "" for destroys
    created_at: float


@dataclass(frozen=True)
class KnownInstance:
    """A machine the journal knows and the provider's list may not show yet (or still shows)."""

    instance_id: str
    group: str
    slot: str
    config: str
    image: str
    name: str
    key: str
    created_at: float
    destroyed_at: float | None


@dataclass(frozen=True)
class ProviderRecord:
    """A provider a cluster's spec declared at some point: enough to reach it again."""

    name: str
    type: str
    rate_limit: float | None
    options: dict[str, Any]
    base: str  # the directory of the spec it came from: relative options resolve against it


class Store(Protocol):
    def identity(self) -> str: ...

    def acquire_lease(self, cluster: str, owner: str, ttl: float, now: float) -> int: ...

    def renew_lease(self, cluster: str, owner: str, epoch: int, ttl: float, now: float) -> None: ...

    def release_lease(self, cluster: str, owner: str, epoch: int) -> None: ...

    def put_desired(self, cluster: str, digest: str, text: str, epoch: int) -> None: ...

    def desired(self, cluster: str) -> tuple[str, str] | None: ...

    def put_config(self, config: str, image: str, properties: dict[str, Any]) -> None: ...

    def config(self, config: str) -> tuple[str, dict[str, Any]] | None: ...

    def next_sequence(self, cluster: str, group: str, epoch: int) -> int: ...

    def begin_intents(self, intents: Sequence[Intent], epoch: int) -> None: ...

    def finish_create(self, key: str, known: KnownInstance, epoch: int) -> None: ...

    def finish_destroy(self, key: str, instance_id: str, now: float, epoch: int) -> None: ...

    def abandon_intent(self, key: str, message: str, epoch: int) -> None: ...

    def pending_intents(self, cluster: str, group: str | None = None) -> list[Intent]: ...

    def known_instances(self, cluster: str, group: str) -> list[KnownInstance]: ...

    def forget_instances(
        self, cluster: str, ids: Iterable[str], group: str | None = None
    ) -> None: ...

    def unhealthy_since(self, cluster: str, group: str) -> dict[str, float]: ...

    def set_unhealthy_since(
        self, cluster: str, group: str, changes: dict[str, float | None]
    ) -> None: ...

    def record_cluster(
        self,
        cluster: str,
        groups: Mapping[str, str],
        providers: Sequence[ProviderRecord],
        epoch: int,
    ) -> None: ...

    def groups_seen(self, cluster: str) -> dict[str, str]: ...

    def groups_with_intents(self, cluster: str) -> set[str]: ...

    def retire_group(self, cluster: str, group: str, epoch: int) -> None: ...

    def providers_seen(self, cluster: str) -> list[ProviderRecord]: ...

    def adopt_journals(self, cluster: str, ids: Iterable[str], epoch: int) -> None: ...

    def adopted_journals(self, cluster: str) -> set[str]: ...

    def birth_times(self, cluster: str, group: str) -> dict[str, float]: ...

    def close(self) -> None: ...


_KEYED_BY_GROUP = {  # machine ids are unique per provider only: these tables key them by group
    "instances": """CREATE TABLE IF NOT EXISTS instances (
  instance_id TEXT NOT NULL, cluster TEXT NOT NULL, grp TEXT NOT NULL, slot TEXT NOT NULL,
  config TEXT NOT NULL, image TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL,
  created_at REAL NOT NULL, destroyed_at REAL, PRIMARY KEY (cluster, grp, instance_id))""",
    "health": """CREATE TABLE IF NOT EXISTS health (cluster TEXT, grp TEXT, instance_id TEXT, since REAL NOT NULL,
  PRIMARY KEY (cluster, grp, instance_id))""",
}
_INDEXES = "CREATE INDEX IF NOT EXISTS instances_group ON instances (cluster, grp);\n"

_SCHEMA = (
    ";\n".join(_KEYED_BY_GROUP.values())
    + ";\n"
    + _INDEXES
    + """
CREATE TABLE IF NOT EXISTS leases (cluster TEXT PRIMARY KEY, owner TEXT, epoch INTEGER NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS desired (cluster TEXT PRIMARY KEY, digest TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS configs (config TEXT PRIMARY KEY, image TEXT NOT NULL, properties TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sequences (cluster TEXT, grp TEXT, value INTEGER NOT NULL, PRIMARY KEY (cluster, grp));
CREATE TABLE IF NOT EXISTS intents (
  key TEXT PRIMARY KEY, cluster TEXT NOT NULL, grp TEXT NOT NULL, op TEXT NOT NULL, slot TEXT NOT NULL,
  instance_id TEXT, config TEXT NOT NULL, reason TEXT NOT NULL, request TEXT NOT NULL,
  created_at REAL NOT NULL, state TEXT NOT NULL, result TEXT, epoch INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS intents_pending ON intents (cluster, state);
CREATE TABLE IF NOT EXISTS births (cluster TEXT, grp TEXT, instance_id TEXT, created_at REAL NOT NULL,
  PRIMARY KEY (cluster, grp, instance_id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups_seen (cluster TEXT, grp TEXT, provider TEXT NOT NULL, retired INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (cluster, grp));
CREATE TABLE IF NOT EXISTS providers_seen (cluster TEXT, name TEXT, type TEXT NOT NULL, rate_limit REAL,
  options TEXT NOT NULL, base TEXT NOT NULL, PRIMARY KEY (cluster, name));
CREATE TABLE IF NOT EXISTS adopted (cluster TEXT, journal TEXT, PRIMARY KEY (cluster, journal));
"""
)


_GROUP_KEY = ["cluster", "grp", "instance_id"]


def _migrate_keys(db: sqlite3.Connection) -> None:
    """Journals made before instance ids were keyed by group (ids are unique per provider only,
    and a cluster's groups may use several): rebuild those tables with the new key."""
    for table in ("instances", "health"):
        info = db.execute(f"PRAGMA table_info({table})").fetchall()
        if not info:
            continue  # a new journal: the schema creates it
        key = [str(row[1]) for row in sorted((r for r in info if r[5]), key=lambda r: r[5])]
        if key == _GROUP_KEY:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
            db.execute(f"DROP INDEX IF EXISTS {table}_group")
            db.execute(_KEYED_BY_GROUP[table])
            db.execute(f"INSERT OR REPLACE INTO {table} SELECT * FROM {table}_old")
            db.execute(f"DROP TABLE {table}_old")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def process_token(pid: int | None = None) -> str:
    """``host:pid:start``: names a live process on this host, and not a later one reusing its pid."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc/PID/stat field 22), None when it is gone
    or a zombie (killed, not yet reaped: dead for our purpose)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def holder_is_dead(token: str | None) -> bool:
    """True only when ``token`` names a process on this host that no longer runs."""
    if not token:
        return False
    host, _, rest = token.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    now_start = _start_time(int(pid_text))
    return now_start is None or (bool(start) and now_start != start)


JOURNAL_HINT = "give another path with --journal, or change journal: in the cluster spec"


class JournalError(ProvisionError):
    """The journal file cannot be used: not a regular file, unreadable, or not a journal."""


def _open_journal(path: Path) -> sqlite3.Connection:
    """The journal database at ``path`` (created with its directory when missing); a path that
    is not a regular file (a FIFO would block), or that SQLite cannot use, is a JournalError."""
    hint = JOURNAL_HINT
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(
            f"journal {path}: cannot make its directory {path.parent}: {exc.strerror or exc}",
            hint=hint,
        ) from exc
    try:
        mode = path.stat().st_mode if path.exists() else stat.S_IFREG
    except OSError as exc:
        raise JournalError(f"journal {path}: {exc.strerror or exc}", hint=hint) from exc
    if not stat.S_ISREG(mode):
        raise JournalError(
            f"journal {path}: {'a directory' if stat.S_ISDIR(mode) else 'not a regular file'}",
            hint=hint,
        )
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise JournalError(
            f"journal {path}: cannot use it as a journal database: {exc}", hint=hint
        ) from exc
    return db


class SqliteStore:
    """The embedded Store: one SQLite file in WAL mode, safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = _open_journal(self.path)
        try:
            _migrate_keys(self._db)
            self._db.executescript(_SCHEMA)
            columns = {str(row[1]) for row in self._db.execute("PRAGMA table_info(leases)")}
            if "holder" not in columns:
                self._db.execute("ALTER TABLE leases ADD COLUMN holder TEXT")
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('journal-id', ?)", (uuid.uuid4().hex[:16],)
            )
            self._identity = str(
                self._db.execute("SELECT value FROM meta WHERE key='journal-id'").fetchone()[0]
            )
        except sqlite3.Error as exc:  # another program's database, or a damaged journal
            self._db.close()
            raise JournalError(
                f"journal {self.path}: cannot use it as a journal database: {exc}",
                hint=JOURNAL_HINT,
            ) from exc

    def identity(self) -> str:
        """This journal's id (16 hex), tagged on every machine it creates."""
        return self._identity

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions --------------------------------------------------------------------

    def _write(self, cluster: str, epoch: int | None, body: Any) -> Any:
        """Run ``body(db)`` in one IMMEDIATE transaction, fenced by ``epoch`` when given."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if epoch is not None:
                    row = db.execute(
                        "SELECT epoch FROM leases WHERE cluster=?", (cluster,)
                    ).fetchone()
                    current = row[0] if row else 0
                    if current != epoch:
                        raise StaleEpochError(
                            f"journal write refused: epoch {epoch} is not the current {current} of {cluster!r}",
                            hint="another daemon took the lease; this one must stop",
                        )
                result = body(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

    def _cluster_of(self, key: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT cluster FROM intents WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else ""

    # -- leases --------------------------------------------------------------------------

    def acquire_lease(self, cluster: str, owner: str, ttl: float, now: float) -> int:
        def body(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT owner, epoch, expires, holder FROM leases WHERE cluster=?", (cluster,)
            ).fetchone()
            if row and row[0] and row[0] != owner and row[2] > now and not holder_is_dead(row[3]):
                raise LeaseHeldError(
                    f"cluster {cluster!r} is managed by {row[0]} (lease for {row[2] - now:.0f}s more)",
                    hint="stop the other daemon, or wait for its lease to expire",
                )
            epoch = (row[1] if row else 0) + 1
            db.execute(
                "INSERT INTO leases (cluster, owner, epoch, expires, holder) VALUES (?,?,?,?,?) ON CONFLICT(cluster) "
                "DO UPDATE SET owner=excluded.owner, epoch=excluded.epoch, expires=excluded.expires, holder=excluded.holder",
                (cluster, owner, epoch, now + ttl, process_token()),
            )
            return epoch

        return int(self._write(cluster, None, body))

    def renew_lease(self, cluster: str, owner: str, epoch: int, ttl: float, now: float) -> None:
        def body(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE leases SET expires=? WHERE cluster=? AND owner=?",
                (now + ttl, cluster, owner),
            )

        self._write(cluster, epoch, body)

    def release_lease(self, cluster: str, owner: str, epoch: int) -> None:
        def body(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE leases SET owner=NULL, expires=0 WHERE cluster=? AND owner=?",
                (cluster, owner),
            )

        with contextlib.suppress(StaleEpochError):
            self._write(cluster, epoch, body)

    # -- desired state and configs -------------------------------------------------------

    def put_desired(self, cluster: str, digest: str, text: str, epoch: int) -> None:
        self._write(
            cluster,
            epoch,
            lambda db: db.execute(
                "INSERT INTO desired VALUES (?,?,?) ON CONFLICT(cluster) DO UPDATE SET digest=excluded.digest, text=excluded.text",
                (cluster, digest, text),
            ),
        )

    def desired(self, cluster: str) -> tuple[str, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT digest, text FROM desired WHERE cluster=?", (cluster,)
            ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def put_config(self, config: str, image: str, properties: dict[str, Any]) -> None:
        text = json.dumps(properties, sort_keys=True, default=str)
        self._write(
            "",
            None,
            lambda db: db.execute(
                "INSERT OR IGNORE INTO configs VALUES (?,?,?)", (config, image, text)
            ),
        )

    def config(self, config: str) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT image, properties FROM configs WHERE config=?", (config,)
            ).fetchone()
        return (str(row[0]), dict(json.loads(row[1]))) if row else None

    def next_sequence(self, cluster: str, group: str, epoch: int) -> int:
        def body(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT INTO sequences VALUES (?,?,1) ON CONFLICT(cluster, grp) DO UPDATE SET value=value+1",
                (cluster, group),
            )
            row = db.execute(
                "SELECT value FROM sequences WHERE cluster=? AND grp=?", (cluster, group)
            ).fetchone()
            return int(row[0])

        return int(self._write(cluster, epoch, body))

    # -- intents -------------------------------------------------------------------------

    def begin_intents(self, intents: Sequence[Intent], epoch: int) -> None:
        if not intents:
            return

        def body(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO intents VALUES (?,?,?,?,?,?,?,?,?,?,'pending',NULL,?)",
                [
                    (
                        i.key,
                        i.cluster,
                        i.group,
                        i.op,
                        i.slot,
                        i.instance_id,
                        i.config,
                        i.reason,
                        i.request,
                        i.created_at,
                        epoch,
                    )
                    for i in intents
                ],
            )

        self._write(intents[0].cluster, epoch, body)

    def finish_create(self, key: str, known: KnownInstance, epoch: int) -> None:
        cluster = self._cluster_of(key)

        def body(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE intents SET state='done', result=?, instance_id=? WHERE key=?",
                (known.instance_id, known.instance_id, key),
            )
            db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,NULL)",
                (
                    known.instance_id,
                    cluster,
                    known.group,
                    known.slot,
                    known.config,
                    known.image,
                    known.name,
                    known.key,
                    known.created_at,
                ),
            )
            db.execute(
                "INSERT OR IGNORE INTO births VALUES (?,?,?,?)",
                (cluster, known.group, known.instance_id, known.created_at),
            )

        self._write(cluster, epoch, body)

    def finish_destroy(self, key: str, instance_id: str, now: float, epoch: int) -> None:
        cluster = self._cluster_of(key)

        def body(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT grp, slot, config FROM intents WHERE key=?", (key,)).fetchone()
            db.execute("UPDATE intents SET state='done', result='destroyed' WHERE key=?", (key,))
            group = row[0] if row else ""
            db.execute(
                "INSERT INTO instances VALUES (?,?,?,?,?,'','','',0,?) ON CONFLICT(cluster, grp, instance_id) DO UPDATE SET destroyed_at=excluded.destroyed_at",
                (instance_id, cluster, group, row[1] if row else "", row[2] if row else "", now),
            )
            db.execute(
                "DELETE FROM health WHERE cluster=? AND grp=? AND instance_id=?",
                (cluster, group, instance_id),
            )
            db.execute(
                "DELETE FROM births WHERE cluster=? AND grp=? AND instance_id=?",
                (cluster, row[0] if row else "", instance_id),
            )

        self._write(cluster, epoch, body)

    def abandon_intent(self, key: str, message: str, epoch: int) -> None:
        cluster = self._cluster_of(key)
        self._write(
            cluster,
            epoch,
            lambda db: db.execute(
                "UPDATE intents SET state='failed', result=? WHERE key=?", (message, key)
            ),
        )

    def pending_intents(self, cluster: str, group: str | None = None) -> list[Intent]:
        query = "SELECT key, cluster, grp, op, slot, instance_id, config, reason, request, created_at FROM intents WHERE cluster=? AND state='pending'"
        args: tuple[str, ...] = (cluster,)
        if group is not None:
            query += " AND grp=?"
            args = (cluster, group)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at, key", args).fetchall()
        return [Intent(*row) for row in rows]

    # -- instances the list may not show yet ---------------------------------------------

    def known_instances(self, cluster: str, group: str) -> list[KnownInstance]:
        with self._lock:
            rows = self._db.execute(
                "SELECT instance_id, grp, slot, config, image, name, key, created_at, destroyed_at FROM instances WHERE cluster=? AND grp=?",
                (cluster, group),
            ).fetchall()
        return [KnownInstance(*row) for row in rows]

    def forget_instances(self, cluster: str, ids: Iterable[str], group: str | None = None) -> None:
        """Drop journal-known machines (of ``group``, or of any group when None)."""
        if group is None:
            rows: list[tuple[str, ...]] = [(cluster, i) for i in ids]
            query = "DELETE FROM instances WHERE cluster=? AND instance_id=?"
        else:
            rows = [(cluster, group, i) for i in ids]
            query = "DELETE FROM instances WHERE cluster=? AND grp=? AND instance_id=?"
        if rows:
            self._write(cluster, None, lambda db: db.executemany(query, rows))

    # -- health history --------------------------------------------------------------------

    def unhealthy_since(self, cluster: str, group: str) -> dict[str, float]:
        with self._lock:
            rows = self._db.execute(
                "SELECT instance_id, since FROM health WHERE cluster=? AND grp=?", (cluster, group)
            ).fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    def set_unhealthy_since(
        self, cluster: str, group: str, changes: dict[str, float | None]
    ) -> None:
        if not changes:
            return

        def body(db: sqlite3.Connection) -> None:
            for instance_id, since in changes.items():
                if since is None:
                    db.execute(
                        "DELETE FROM health WHERE cluster=? AND grp=? AND instance_id=?",
                        (cluster, group, instance_id),
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO health VALUES (?,?,?,?)",
                        (cluster, group, instance_id, since),
                    )

        self._write(cluster, None, body)

    def birth_times(self, cluster: str, group: str) -> dict[str, float]:
        """When each machine this journal created was made (kept while the machine lives)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT instance_id, created_at FROM births WHERE cluster=? AND grp=?",
                (cluster, group),
            ).fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    # -- what the cluster ever used ------------------------------------------------------------

    def record_cluster(
        self,
        cluster: str,
        groups: Mapping[str, str],
        providers: Sequence[ProviderRecord],
        epoch: int,
    ) -> None:
        """Remember the spec's groups (name -> provider) and providers; a group is never forgotten
        until :meth:`retire_group` says its machines are gone, a provider never."""

        def body(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO groups_seen VALUES (?,?,?,0) ON CONFLICT(cluster, grp) DO UPDATE SET provider=excluded.provider, retired=0",
                [(cluster, g, p) for g, p in groups.items()],
            )
            db.executemany(
                "INSERT OR REPLACE INTO providers_seen VALUES (?,?,?,?,?,?)",
                [
                    (
                        cluster,
                        p.name,
                        p.type,
                        p.rate_limit,
                        json.dumps(p.options, sort_keys=True, default=str),
                        p.base,
                    )
                    for p in providers
                ],
            )

        self._write(cluster, epoch, body)

    def groups_seen(self, cluster: str) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT grp, provider FROM groups_seen WHERE cluster=? AND retired=0", (cluster,)
            ).fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    def groups_with_intents(self, cluster: str) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT grp FROM intents WHERE cluster=?", (cluster,)
            ).fetchall()
        return {str(r[0]) for r in rows}

    def retire_group(self, cluster: str, group: str, epoch: int) -> None:
        self._write(
            cluster,
            epoch,
            lambda db: db.execute(
                "UPDATE groups_seen SET retired=1 WHERE cluster=? AND grp=?", (cluster, group)
            ),
        )

    def providers_seen(self, cluster: str) -> list[ProviderRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, type, rate_limit, options, base FROM providers_seen WHERE cluster=? ORDER BY name",
                (cluster,),
            ).fetchall()
        return [
            ProviderRecord(str(r[0]), str(r[1]), r[2], dict(json.loads(r[3])), str(r[4]))
            for r in rows
        ]

    def adopt_journals(self, cluster: str, ids: Iterable[str], epoch: int) -> None:
        rows = [(cluster, i) for i in ids]
        if rows:
            self._write(
                cluster,
                epoch,
                lambda db: db.executemany("INSERT OR IGNORE INTO adopted VALUES (?,?)", rows),
            )

    def adopted_journals(self, cluster: str) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT journal FROM adopted WHERE cluster=?", (cluster,)
            ).fetchall()
        return {str(r[0]) for r in rows}

    # -- inspection (status, tests) ---------------------------------------------------------

    def intent_counts(self, cluster: str) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM intents WHERE cluster=? GROUP BY state", (cluster,)
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def lease_holder(self, cluster: str) -> str:
        """Who holds the cluster's lease now ('' when nobody does)."""
        with self._lock:
            row = self._db.execute(
                "SELECT owner, expires FROM leases WHERE cluster=?", (cluster,)
            ).fetchone()
        return str(row[0]) if row and row[0] and row[1] > time.time() else ""

    def current_epoch(self, cluster: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT epoch FROM leases WHERE cluster=?", (cluster,)
            ).fetchone()
        return int(row[0]) if row else 0
