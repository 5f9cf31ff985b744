"""Moving a journal between stores (``provision journal export | provision journal import``):
SQLite to etcd when one machine is no longer enough, and back.

The export is one JSON document read in one consistent snapshot (a SQLite read transaction, one
etcd range at one revision): every cluster's desired spec, sequences, intents with their states,
machines the journal knows, health and birth times, groups, providers and adopted journals, and
the configs. The import refuses a destination that already has one of the clusters, and
- adopts the source journal's id for each cluster (its machines carry that id in their tags:
  the new journal manages them without ``--adopt``);
- keeps fencing tokens growing: the destination's next epoch is above every epoch the source
  used (providers refuse a token lower than one they have seen).
"""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import fields
from typing import Any
from urllib.parse import quote, unquote

from provision.errors import ProvisionError
from provision.reconcile.etcd.client import prefix_end, put_op
from provision.reconcile.etcd.store import EtcdStore
from provision.reconcile.journal import Intent, SqliteStore

FORMAT = "provision-journal"
VERSION = 1
AnyStore = SqliteStore | EtcdStore
# an intent's fields, in the order of the SQLite intents table's columns: what it asks for,
# then how it went (a pending intent's record in etcd is what it asks for)
INTENT_REQUEST = tuple(f.name for f in fields(Intent))
INTENT = (*INTENT_REQUEST, "state", "result", "epoch")
# a machine the journal knows, in the order of the SQLite instances table's columns
INSTANCE = (
    "instance_id",
    "cluster",
    "group",
    "slot",
    "config",
    "image",
    "name",
    "key",
    "created_at",
    "destroyed_at",
)


class JournalImportError(ProvisionError):
    """An export that cannot be imported here."""


def export_journal(store: AnyStore) -> dict[str, Any]:
    body = _dump_etcd(store) if isinstance(store, EtcdStore) else _dump_sqlite(store)
    return {"format": FORMAT, "version": VERSION, "journal": store.identity(), **body}


def import_journal(store: AnyStore, doc: dict[str, Any]) -> list[str]:
    """Load an export into ``store``; the names of the clusters imported."""
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise JournalImportError(
            "not a journal export (expected the output of `provision journal export`)"
        )
    clusters: dict[str, Any] = dict(doc.get("clusters", {}))
    present = [c for c in clusters if _has_cluster(store, c)]
    if present:
        raise JournalImportError(
            f"the destination journal already has cluster(s) {', '.join(sorted(present))}; nothing imported",
            hint="import into an empty journal (or another etcd prefix)",
        )
    for data in clusters.values():
        if doc["journal"] != store.identity():
            data["adopted"] = sorted({*data.get("adopted", []), str(doc["journal"])})
    if isinstance(store, EtcdStore):
        _load_etcd(store, doc, clusters)
    else:
        _load_sqlite(store, doc, clusters)
    return sorted(clusters)


def _has_cluster(store: AnyStore, cluster: str) -> bool:
    if isinstance(store, EtcdStore):
        return bool(store.client.get_prefix(store._cdir(cluster), keys_only=True))
    with sqlite3.connect(store.path) as db:
        return any(
            db.execute(f"SELECT 1 FROM {t} WHERE cluster=? LIMIT 1", (cluster,)).fetchone()
            for t in ("desired", "intents", "instances", "groups_seen", "leases")
        )


# -- SQLite ------------------------------------------------------------------------------------


def _dump_sqlite(store: SqliteStore) -> dict[str, Any]:
    db = sqlite3.connect(store.path)
    try:
        db.execute("BEGIN")
        clusters: dict[str, dict[str, Any]] = {}

        def cluster(name: str) -> dict[str, Any]:
            return clusters.setdefault(str(name), _empty())

        for c, digest, text in db.execute("SELECT cluster, digest, text FROM desired"):
            cluster(c)["desired"] = {"digest": digest, "text": text}
        for c, epoch in db.execute("SELECT cluster, epoch FROM leases"):
            cluster(c)["epoch"] = max(cluster(c)["epoch"], int(epoch))
        for c, g, value in db.execute("SELECT cluster, grp, value FROM sequences"):
            cluster(c)["sequences"][g] = int(value)
        for row in db.execute(
            "SELECT key, cluster, grp, op, slot, instance_id, config, reason, request, created_at, state, result, epoch FROM intents"
        ):
            record = dict(zip(INTENT, row, strict=True))
            cluster(record["cluster"])["intents"].append(record)
            cluster(record["cluster"])["epoch"] = max(
                cluster(record["cluster"])["epoch"], int(record["epoch"])
            )
        for row in db.execute(
            "SELECT instance_id, cluster, grp, slot, config, image, name, key, created_at, destroyed_at FROM instances"
        ):
            record = dict(zip(INSTANCE, row, strict=True))
            cluster(record.pop("cluster"))["instances"].append(record)
        for c, g, i, since in db.execute("SELECT cluster, grp, instance_id, since FROM health"):
            cluster(c)["health"].append({"group": g, "instance_id": i, "since": since})
        for c, g, i, at in db.execute("SELECT cluster, grp, instance_id, created_at FROM births"):
            cluster(c)["births"].append({"group": g, "instance_id": i, "created_at": at})
        for c, g, provider, retired in db.execute(
            "SELECT cluster, grp, provider, retired FROM groups_seen"
        ):
            cluster(c)["groups"].append(
                {"group": g, "provider": provider, "retired": bool(retired)}
            )
        for c, name, kind, rate, options, base in db.execute(
            "SELECT cluster, name, type, rate_limit, options, base FROM providers_seen"
        ):
            cluster(c)["providers"].append(
                {
                    "name": name,
                    "type": kind,
                    "rate_limit": rate,
                    "options": json.loads(options),
                    "base": base,
                }
            )
        for c, journal in db.execute("SELECT cluster, journal FROM adopted"):
            cluster(c)["adopted"].append(journal)
        configs = [
            {"config": c, "image": i, "properties": json.loads(p)}
            for c, i, p in db.execute("SELECT config, image, properties FROM configs")
        ]
        db.execute("COMMIT")
    finally:
        db.close()
    return {"configs": configs, "clusters": clusters}


def _load_sqlite(store: SqliteStore, doc: dict[str, Any], clusters: dict[str, Any]) -> None:
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO configs VALUES (?,?,?)",
                [
                    (c["config"], c["image"], json.dumps(c["properties"], sort_keys=True))
                    for c in doc.get("configs", [])
                ],
            )
            for name, data in clusters.items():
                if data.get("desired"):
                    db.execute(
                        "INSERT INTO desired VALUES (?,?,?)",
                        (name, data["desired"]["digest"], data["desired"]["text"]),
                    )
                db.execute(
                    "INSERT INTO leases (cluster, owner, epoch, expires, holder) VALUES (?, NULL, ?, 0, NULL)",
                    (name, int(data["epoch"])),
                )
                db.executemany(
                    "INSERT INTO sequences VALUES (?,?,?)",
                    [(name, g, n) for g, n in data["sequences"].items()],
                )
                db.executemany(
                    "INSERT INTO intents VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [_row(INTENT, i, name) for i in data["intents"]],
                )
                db.executemany(
                    "INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [_row(INSTANCE, k, name) for k in data["instances"]],
                )
                db.executemany(
                    "INSERT INTO health VALUES (?,?,?,?)",
                    [(name, h["group"], h["instance_id"], h["since"]) for h in data["health"]],
                )
                db.executemany(
                    "INSERT INTO births VALUES (?,?,?,?)",
                    [(name, b["group"], b["instance_id"], b["created_at"]) for b in data["births"]],
                )
                db.executemany(
                    "INSERT INTO groups_seen VALUES (?,?,?,?)",
                    [(name, g["group"], g["provider"], int(g["retired"])) for g in data["groups"]],
                )
                db.executemany(
                    "INSERT INTO providers_seen VALUES (?,?,?,?,?,?)",
                    [
                        (
                            name,
                            p["name"],
                            p["type"],
                            p["rate_limit"],
                            json.dumps(p["options"], sort_keys=True),
                            p["base"],
                        )
                        for p in data["providers"]
                    ],
                )
                db.executemany(
                    "INSERT INTO adopted VALUES (?,?)", [(name, j) for j in data["adopted"]]
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()


# -- etcd ------------------------------------------------------------------------------------------


def _empty() -> dict[str, Any]:
    return {
        "epoch": 0,
        "desired": None,
        "sequences": {},
        "intents": [],
        "instances": [],
        "health": [],
        "births": [],
        "groups": [],
        "providers": [],
        "adopted": [],
    }


def _dump_etcd(store: EtcdStore) -> dict[str, Any]:
    root = store.root
    body = store.client.call(
        "kv/range", {"key": _b64(root), "range_end": _b64(_end(root))}
    )  # one revision: a snapshot
    revision = int(body["header"]["revision"])
    configs: list[dict[str, Any]] = []
    clusters: dict[str, dict[str, Any]] = {}
    for item in body.get("kvs", []):
        key = base64.b64decode(item["key"]).decode()[len(root) :]
        value = base64.b64decode(item.get("value", "")).decode()
        parts = [unquote(p) for p in key.split("/")]
        if parts[0] == "configs":
            configs.append({"config": parts[1], **json.loads(value)})
            continue
        if parts[0] != "c" or len(parts) < 3:
            continue
        data = clusters.setdefault(parts[1], _empty())
        data["epoch"] = revision  # every token this journal handed out is at most its revision
        kind, rest = parts[2], parts[3:]
        if kind == "desired":
            data["desired"] = json.loads(value)
        elif kind == "seq":
            data["sequences"][rest[0]] = int(value)
        elif kind == "intents":
            data["intents"].append(json.loads(value))
        elif kind == "inst":
            data["instances"].append(json.loads(value))
        elif kind == "health":
            data["health"].append(
                {"group": rest[0], "instance_id": rest[1], "since": json.loads(value)}
            )
        elif kind == "birth":
            data["births"].append(
                {"group": rest[0], "instance_id": rest[1], "created_at": json.loads(value)}
            )
        elif kind == "groups":
            data["groups"].append({"group": rest[0], **json.loads(value)})
        elif kind == "providers":
            data["providers"].append(json.loads(value))
        elif kind == "adopted":
            data["adopted"].append(rest[0])
    return {"configs": configs, "clusters": clusters}


def _load_etcd(store: EtcdStore, doc: dict[str, Any], clusters: dict[str, Any]) -> None:
    c = store._c
    ops = [
        put_op(
            store.root + "configs/" + _q(x["config"]),
            _dumps({"image": x["image"], "properties": x["properties"]}),
        )
        for x in doc.get("configs", [])
    ]
    floor = 0
    for name, data in clusters.items():
        floor = max(floor, int(data["epoch"]))
        if data.get("desired"):
            ops.append(put_op(c(name, "desired"), _dumps(data["desired"])))
        ops += [put_op(c(name, "seq", g), str(n)) for g, n in data["sequences"].items()]
        for i in data["intents"]:
            fields = {k: i[k] for k in INTENT_REQUEST}
            fields["cluster"] = name
            ops.append(
                put_op(
                    c(name, "intents", i["key"]),
                    _dumps(
                        {**fields, "state": i["state"], "result": i["result"], "epoch": i["epoch"]}
                    ),
                )
            )
            ops.append(put_op(c(name, "intent-groups", i["group"]), "1"))
            if i["state"] == "pending":
                ops.append(put_op(c(name, "pending", i["group"], i["key"]), _dumps(fields)))
        ops += [
            put_op(c(name, "inst", k["group"], k["instance_id"]), _dumps(k))
            for k in data["instances"]
        ]
        ops += [
            put_op(c(name, "health", h["group"], h["instance_id"]), _dumps(h["since"]))
            for h in data["health"]
        ]
        ops += [
            put_op(c(name, "birth", b["group"], b["instance_id"]), _dumps(b["created_at"]))
            for b in data["births"]
        ]
        ops += [
            put_op(
                c(name, "groups", g["group"]),
                _dumps({"provider": g["provider"], "retired": bool(g["retired"])}),
            )
            for g in data["groups"]
        ]
        ops += [put_op(c(name, "providers", p["name"]), _dumps(p)) for p in data["providers"]]
        ops += [put_op(c(name, "adopted", j), "1") for j in data["adopted"]]
    unique = list(
        {op["request_put"]["key"]: op for op in ops}.values()
    )  # etcd refuses a key twice in one transaction
    store._write(None, unique)
    # Tokens are etcd revisions: move the revision past every epoch the source used.
    bump = store.root + "meta/epoch-floor"
    revision = store.client.put(bump, str(floor))
    while revision <= floor:
        revision = store.client.put(bump, str(floor))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _end(prefix: str) -> str:
    return prefix_end(prefix)


def _q(part: str) -> str:
    return quote(part, safe="")


def _row(columns: tuple[str, ...], record: dict[str, Any], cluster: str) -> tuple[Any, ...]:
    """``record``'s values in the table's column order, in the cluster it is imported as."""
    return tuple(cluster if c == "cluster" else record[c] for c in columns)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
