"""The etcd Store: the journal in an etcd cluster, every write a transaction fenced by the
writer's token, so several daemons on several machines share one journal safely.

Keys (under ``PREFIX/``; parts are URL-quoted)::

  meta/journal-id                       this journal's id (tagged on every machine)
  configs/CONFIG                        {image, properties}
  c/CLUSTER/leader                      the exclusive lease (apply, down, a lone daemon)
  c/CLUSTER/members/OWNER               a sharded daemon, bound to its etcd lease
  c/CLUSTER/owner/GROUP                 the group's owner, bound to the owner's lease
  c/CLUSTER/desired                     {digest, text}
  c/CLUSTER/seq/GROUP                   the group's sequence number
  c/CLUSTER/intents/KEY                 every intent, with state, result and epoch
  c/CLUSTER/pending/GROUP/KEY           the pending ones (what a restart re-drives)
  c/CLUSTER/intent-groups/GROUP         groups that ever had an intent
  c/CLUSTER/inst/GROUP/ID               machines the journal knows (created, destroyed)
  c/CLUSTER/health/GROUP/ID             first seen unhealthy
  c/CLUSTER/birth/GROUP/ID              creation time of each live machine
  c/CLUSTER/groups/GROUP                {provider, retired}
  c/CLUSTER/providers/NAME              a provider the spec declared once
  c/CLUSTER/adopted/JOURNAL             journals whose machines this one took over

Fencing: an epoch is the create revision of an election key (the leader key, a member key or
a group's owner key); etcd revisions are unique and grow, so tokens are monotonic across
elections. The store remembers which key each epoch it acquired names, and every fenced write
is ``txn(create_revision(that key) == epoch) then writes``: a writer whose key expired or was
taken over is refused by etcd itself (:class:`StaleEpochError`).
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

from provision.reconcile.etcd.client import (
    EtcdClient,
    KeyValue,
    created_at,
    delete_op,
    modified_at,
    put_op,
    range_op,
)
from provision.reconcile.etcd.location import EtcdLocation
from provision.reconcile.journal import (
    Intent,
    KnownInstance,
    LeaseHeldError,
    ProviderRecord,
    holder_is_dead,
    process_token,
)
from provision.reconcile.provider import StaleEpochError

MAX_OPS = 100  # etcd's --max-txn-ops defaults to 128


def _q(part: str) -> str:
    return quote(part, safe="")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class EtcdStore:
    """The Store Protocol over etcd's JSON gateway."""

    def __init__(self, location: EtcdLocation, client: EtcdClient | None = None) -> None:
        self.location = location
        self.client = client or EtcdClient(location.endpoints, location.auth)
        self.root = location.prefix.strip("/") + "/"
        self._lock = threading.Lock()
        self._fences: dict[int, str] = {}  # epoch -> the election key it is the create revision of
        self._leases: dict[int, int] = {}  # epoch -> the etcd lease that keeps its key
        self._identity = self._load_identity()

    # -- keys ----------------------------------------------------------------------------

    def _c(self, cluster: str, *parts: str) -> str:
        return self.root + "c/" + "/".join([_q(cluster), *(_q(p) for p in parts)])

    def _cdir(self, cluster: str, *parts: str) -> str:
        return self._c(cluster, *parts) + "/"

    def _load_identity(self) -> str:
        key = self.root + "meta/journal-id"
        fresh = uuid.uuid4().hex[:16]
        result = self.client.txn([created_at(key, 0)], [put_op(key, fresh)], [range_op(key)])
        return fresh if result.succeeded else result.ranged(0)[0].value

    def identity(self) -> str:
        return self._identity

    def describe(self) -> str:
        return self.location.describe()

    def close(self) -> None:
        self.client.close()

    @property
    def round_trips(self) -> int:
        return self.client.round_trips

    # -- fenced writes -------------------------------------------------------------------

    def _guard(self, epoch: int | None) -> list[dict[str, Any]]:
        if epoch is None:
            return []
        with self._lock:
            key = self._fences.get(epoch)
        if key is None:
            raise StaleEpochError(
                f"journal write refused: epoch {epoch} is not held by this daemon",
                hint="another daemon took the lease; this one must stop",
            )
        return [created_at(key, epoch)]

    def _write(
        self, epoch: int | None, ops: Sequence[dict[str, Any]], extra: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Apply ``ops`` in transactions of at most MAX_OPS, each fenced by ``epoch``."""
        guard = self._guard(epoch)
        chunks = [list(ops[i : i + MAX_OPS]) for i in range(0, len(ops), MAX_OPS)] or [[]]
        for chunk in chunks:
            if not chunk:
                continue
            result = self.client.txn(guard + list(extra), chunk)
            if not result.succeeded:
                self._refused(epoch)

    def _refused(self, epoch: int | None) -> None:
        with self._lock:
            key = self._fences.pop(epoch, None) if epoch is not None else None
        raise StaleEpochError(
            f"journal write refused by etcd: epoch {epoch} no longer holds {key or 'its key'}",
            hint="another daemon took the lease; this one must stop",
        )

    def _json(self, key: str) -> Any:
        kv = self.client.get(key)
        return json.loads(kv.value) if kv is not None else None

    def _prefix(self, prefix: str) -> list[tuple[str, Any]]:
        return [
            (kv.key[len(prefix) :], json.loads(kv.value)) for kv in self.client.get_prefix(prefix)
        ]

    # -- the exclusive lease ---------------------------------------------------------------

    def _grant(self, ttl: float) -> int:
        return self.client.grant(max(2, math.ceil(ttl)))

    def _remember(self, epoch: int, key: str, lease: int) -> None:
        with self._lock:
            self._fences[epoch] = key
            self._leases[epoch] = lease

    def acquire_lease(self, cluster: str, owner: str, ttl: float, now: float) -> int:
        """The cluster's exclusive lease: refused while another holds it or sharded daemons run."""
        leader, members = self._c(cluster, "leader"), self._cdir(cluster, "members")
        value = _dumps({"owner": owner, "holder": process_token(), "since": now})
        for _ in range(3):
            lease = self._grant(ttl)
            result = self.client.txn(
                [created_at(leader, 0)],
                [put_op(leader, value, lease), _range_prefix(members)],
                [range_op(leader)],
            )
            if result.succeeded:
                running = result.ranged(1)
                if running:
                    self.client.txn([created_at(leader, result.revision)], [delete_op(leader)])
                    self.client.revoke(lease)
                    raise LeaseHeldError(
                        f"cluster {cluster!r} is managed by {len(running)} sharded daemon(s): "
                        + ", ".join(kv.key.rsplit("/", 1)[-1] for kv in running),
                        hint="stop the daemons first",
                    )
                self._remember(result.revision, leader, lease)
                return result.revision
            self.client.revoke(lease)
            held = result.ranged(0)
            if not held:
                continue  # released in between: try again
            info = json.loads(held[0].value)
            if info.get("owner") == owner or holder_is_dead(
                info.get("holder")
            ):  # as SQLite: the same owner, or a dead process
                self.client.txn([created_at(leader, held[0].create_revision)], [delete_op(leader)])
                continue
            raise LeaseHeldError(
                f"cluster {cluster!r} is managed by {info.get('owner')} (etcd lease {held[0].lease:x})",
                hint="stop the other daemon, or wait for its lease to expire",
            )
        raise LeaseHeldError(
            f"cluster {cluster!r}: the lease keeps changing hands", hint="try again"
        )

    def renew_lease(self, cluster: str, owner: str, epoch: int, ttl: float, now: float) -> None:
        with self._lock:
            lease = self._leases.get(epoch)
        if lease is None or self.client.keepalive(lease) <= 0:
            self._refused(epoch)

    def release_lease(self, cluster: str, owner: str, epoch: int) -> None:
        with self._lock:
            lease = self._leases.pop(epoch, None)
            self._fences.pop(epoch, None)
            for e in [e for e, held in self._leases.items() if held == lease]:
                self._leases.pop(e)
                self._fences.pop(e, None)
        if lease is not None:
            self.client.revoke(lease)

    def current_epoch(self, cluster: str) -> int:
        kv = self.client.get(self._c(cluster, "leader"))
        return kv.create_revision if kv is not None else 0

    def lease_holder(self, cluster: str) -> str:
        info = self._json(self._c(cluster, "leader"))
        return str(info.get("owner", "")) if info else ""

    # -- sharding: members and group owners ---------------------------------------------------

    def join(self, cluster: str, owner: str, ttl: float) -> tuple[int, int]:
        """Become a member of the cluster's daemons: (member token, etcd lease). Refused while the
        exclusive lease is held or a live member has the same name."""
        key = self._c(cluster, "members", owner)
        lease = self._grant(ttl)
        value = _dumps({"owner": owner, "holder": process_token()})
        result = self.client.txn(
            [created_at(self._c(cluster, "leader"), 0), created_at(key, 0)],
            [put_op(key, value, lease)],
            [range_op(self._c(cluster, "leader")), range_op(key)],
        )
        if not result.succeeded:
            self.client.revoke(lease)
            leader, same = result.ranged(0), result.ranged(1)
            if leader:
                raise LeaseHeldError(
                    f"cluster {cluster!r} is held exclusively by {json.loads(leader[0].value).get('owner')}",
                    hint="wait for the apply or down to finish",
                )
            raise LeaseHeldError(
                f"a daemon named {owner!r} is already a member of cluster {cluster!r} (lease {same[0].lease:x})",
                hint="give each daemon its own --owner, or wait for the old one's lease to expire",
            )
        self._remember(result.revision, key, lease)
        return result.revision, lease

    def members(self, cluster: str) -> list[str]:
        prefix = self._cdir(cluster, "members")
        return sorted(
            kv.key[len(prefix) :] for kv in self.client.get_prefix(prefix, keys_only=True)
        )

    def group_owners(self, cluster: str) -> dict[str, tuple[str, int]]:
        """group -> (owner, token) for every owned group."""
        prefix = self._cdir(cluster, "owner")
        out = {}
        for kv in self.client.get_prefix(prefix):
            out[_unq(kv.key[len(prefix) :])] = (
                str(json.loads(kv.value).get("owner", "")),
                kv.create_revision,
            )
        return out

    def claim_group(self, cluster: str, group: str, owner: str, member_epoch: int) -> int | None:
        """Own ``group`` (its token) while it has no owner and this daemon is still a member."""
        with self._lock:
            member_key, lease = self._fences.get(member_epoch), self._leases.get(member_epoch)
        if member_key is None or lease is None:
            raise StaleEpochError(
                f"member epoch {member_epoch} is not held", hint="the daemon must rejoin"
            )
        key = self._c(cluster, "owner", group)
        result = self.client.txn(
            [created_at(key, 0), created_at(member_key, member_epoch)],
            [put_op(key, _dumps({"owner": owner}), lease)],
            [range_op(member_key)],
        )
        if not result.succeeded:
            if not result.ranged(0) or result.ranged(0)[0].create_revision != member_epoch:
                self._refused(member_epoch)
            return None
        self._remember(result.revision, key, lease)
        return result.revision

    def release_group(self, cluster: str, group: str, epoch: int) -> None:
        key = self._c(cluster, "owner", group)
        with self._lock:
            self._fences.pop(epoch, None)
            self._leases.pop(epoch, None)
        self.client.txn([created_at(key, epoch)], [delete_op(key)])

    def revoke_all(self) -> None:
        """Drop every lease this handle holds, as if its process had died and the TTL run out."""
        with self._lock:
            leases = set(self._leases.values())
            self._leases.clear()
            self._fences.clear()
        for lease in leases:
            self.client.revoke(lease)

    def forget_epoch(self, epoch: int) -> None:
        with self._lock:
            self._fences.pop(epoch, None)
            self._leases.pop(epoch, None)

    # -- desired state and configs -------------------------------------------------------

    def put_desired(self, cluster: str, digest: str, text: str, epoch: int) -> None:
        self._write(
            epoch, [put_op(self._c(cluster, "desired"), _dumps({"digest": digest, "text": text}))]
        )

    def desired(self, cluster: str) -> tuple[str, str] | None:
        body = self._json(self._c(cluster, "desired"))
        return (str(body["digest"]), str(body["text"])) if body else None

    def put_config(self, config: str, image: str, properties: dict[str, Any]) -> None:
        key = self.root + "configs/" + _q(config)
        self.client.txn(
            [created_at(key, 0)], [put_op(key, _dumps({"image": image, "properties": properties}))]
        )

    def config(self, config: str) -> tuple[str, dict[str, Any]] | None:
        body = self._json(self.root + "configs/" + _q(config))
        return (str(body["image"]), dict(body["properties"])) if body else None

    def next_sequence(self, cluster: str, group: str, epoch: int) -> int:
        key = self._c(cluster, "seq", group)
        guard = self._guard(epoch)
        fence = _fence_key(guard)
        for _ in range(20):
            kv = self.client.get(key)
            value = (int(kv.value) if kv else 0) + 1
            result = self.client.txn(
                guard + [modified_at(key, kv.mod_revision if kv else 0)],
                [put_op(key, str(value))],
                [range_op(fence)],
            )
            if result.succeeded:
                return value
            held = result.ranged(0)
            if not held or held[0].create_revision != epoch:
                self._refused(epoch)
        raise StaleEpochError(
            f"sequence of {cluster}/{group} keeps changing under epoch {epoch}", hint="two writers?"
        )

    # -- intents -------------------------------------------------------------------------

    def _intent_key(self, key: str) -> str:
        return self._c(key.split("/", 1)[0], "intents", key)

    def begin_intents(self, intents: Sequence[Intent], epoch: int) -> None:
        ops = []
        for i in intents:
            record = {**asdict(i), "state": "pending", "result": None, "epoch": epoch}
            ops.append(put_op(self._intent_key(i.key), _dumps(record)))
            ops.append(put_op(self._c(i.cluster, "pending", i.group, i.key), _dumps(asdict(i))))
        for cluster, group in sorted({(i.cluster, i.group) for i in intents}):
            ops.append(put_op(self._c(cluster, "intent-groups", group), "1"))
        self._write(epoch, ops)

    def _intent(self, key: str) -> dict[str, Any] | None:
        body = self._json(self._intent_key(key))
        return dict(body) if body else None

    def _finish(
        self, key: str, record: dict[str, Any], ops: list[dict[str, Any]], epoch: int
    ) -> None:
        cluster = str(record["cluster"])
        ops = [
            put_op(self._intent_key(key), _dumps(record)),
            delete_op(self._c(cluster, "pending", str(record["group"]), key)),
            *ops,
        ]
        self._write(epoch, ops)

    def finish_create(self, key: str, known: KnownInstance, epoch: int) -> None:
        record = self._intent(key)
        if record is None:
            return
        cluster = str(record["cluster"])
        record.update(state="done", result=known.instance_id, instance_id=known.instance_id)
        inst = self._c(cluster, "inst", known.group, known.instance_id)
        birth = self._c(cluster, "birth", known.group, known.instance_id)
        ops = [put_op(inst, _dumps(asdict(known)))]
        if self.client.get(birth) is None:
            ops.append(put_op(birth, _dumps(known.created_at)))
        self._finish(key, record, ops, epoch)

    def finish_destroy(self, key: str, instance_id: str, now: float, epoch: int) -> None:
        record = self._intent(key)
        if record is None:
            return
        cluster, group = str(record["cluster"]), str(record["group"])
        record.update(state="done", result="destroyed")
        inst = self._c(cluster, "inst", group, instance_id)
        known = self._json(inst) or {
            "instance_id": instance_id,
            "group": group,
            "slot": record["slot"],
            "config": record["config"],
            "image": "",
            "name": "",
            "key": "",
            "created_at": 0.0,
        }
        known["destroyed_at"] = now
        ops = [
            put_op(inst, _dumps(known)),
            delete_op(self._c(cluster, "health", group, instance_id)),
            delete_op(self._c(cluster, "birth", group, instance_id)),
        ]
        self._finish(key, record, ops, epoch)

    def abandon_intent(self, key: str, message: str, epoch: int) -> None:
        record = self._intent(key)
        if record is None:
            return
        record.update(state="failed", result=message)
        self._finish(key, record, [], epoch)

    def pending_intents(self, cluster: str, group: str | None = None) -> list[Intent]:
        prefix = self._cdir(cluster, "pending") + (_q(group) + "/" if group is not None else "")
        intents = [Intent(**body) for _, body in self._prefix(prefix)]
        return sorted(intents, key=lambda i: (i.created_at, i.key))

    def intent_counts(self, cluster: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, body in self._prefix(self._cdir(cluster, "intents")):
            counts[str(body["state"])] = counts.get(str(body["state"]), 0) + 1
        return counts

    def intents(self, cluster: str) -> list[dict[str, Any]]:
        """Every intent with its state, result and epoch (export)."""
        return [body for _, body in self._prefix(self._cdir(cluster, "intents"))]

    # -- machines the list may not show yet ---------------------------------------------

    def known_instances(self, cluster: str, group: str) -> list[KnownInstance]:
        return [
            KnownInstance(**body) for _, body in self._prefix(self._cdir(cluster, "inst", group))
        ]

    def forget_instances(self, cluster: str, ids: Iterable[str], group: str | None = None) -> None:
        wanted = set(ids)
        if not wanted:
            return
        if group is not None:
            ops = [delete_op(self._c(cluster, "inst", group, i)) for i in sorted(wanted)]
        else:
            prefix = self._cdir(cluster, "inst")
            ops = [
                delete_op(kv.key)
                for kv in self.client.get_prefix(prefix, keys_only=True)
                if _unq(kv.key.rsplit("/", 1)[-1]) in wanted
            ]
        self._write(None, ops)

    # -- health history --------------------------------------------------------------------

    def unhealthy_since(self, cluster: str, group: str) -> dict[str, float]:
        return {_unq(k): float(v) for k, v in self._prefix(self._cdir(cluster, "health", group))}

    def set_unhealthy_since(
        self, cluster: str, group: str, changes: dict[str, float | None]
    ) -> None:
        ops = [
            delete_op(self._c(cluster, "health", group, i))
            if since is None
            else put_op(self._c(cluster, "health", group, i), _dumps(since))
            for i, since in changes.items()
        ]
        self._write(None, ops)

    def birth_times(self, cluster: str, group: str) -> dict[str, float]:
        return {_unq(k): float(v) for k, v in self._prefix(self._cdir(cluster, "birth", group))}

    # -- what the cluster ever used ------------------------------------------------------------

    def record_cluster(
        self,
        cluster: str,
        groups: Mapping[str, str],
        providers: Sequence[ProviderRecord],
        epoch: int,
    ) -> None:
        ops = [
            put_op(self._c(cluster, "groups", g), _dumps({"provider": p, "retired": False}))
            for g, p in groups.items()
        ]
        ops += [put_op(self._c(cluster, "providers", p.name), _dumps(asdict(p))) for p in providers]
        self._write(epoch, ops)

    def groups_seen(self, cluster: str) -> dict[str, str]:
        return {
            _unq(k): str(v["provider"])
            for k, v in self._prefix(self._cdir(cluster, "groups"))
            if not v.get("retired")
        }

    def groups_with_intents(self, cluster: str) -> set[str]:
        prefix = self._cdir(cluster, "intent-groups")
        return {
            _unq(kv.key[len(prefix) :]) for kv in self.client.get_prefix(prefix, keys_only=True)
        }

    def retire_group(self, cluster: str, group: str, epoch: int) -> None:
        key = self._c(cluster, "groups", group)
        body = self._json(key)
        if body is not None:
            self._write(epoch, [put_op(key, _dumps({**body, "retired": True}))])

    def providers_seen(self, cluster: str) -> list[ProviderRecord]:
        return [ProviderRecord(**v) for _, v in self._prefix(self._cdir(cluster, "providers"))]

    def adopt_journals(self, cluster: str, ids: Iterable[str], epoch: int) -> None:
        self._write(epoch, [put_op(self._c(cluster, "adopted", i), "1") for i in sorted(set(ids))])

    def adopted_journals(self, cluster: str) -> set[str]:
        prefix = self._cdir(cluster, "adopted")
        return {
            _unq(kv.key[len(prefix) :]) for kv in self.client.get_prefix(prefix, keys_only=True)
        }


def _unq(part: str) -> str:
    from urllib.parse import unquote

    return unquote(part)


def _fence_key(guard: list[dict[str, Any]]) -> str:
    import base64

    return base64.b64decode(guard[0]["key"]).decode()


def _range_prefix(prefix: str) -> dict[str, Any]:
    import base64

    from provision.reconcile.etcd.client import prefix_end

    return {
        "request_range": {
            "key": base64.b64encode(prefix.encode()).decode(),
            "range_end": base64.b64encode(prefix_end(prefix).encode()).decode(),
            "keys_only": True,
        }
    }


__all__ = ["EtcdStore", "KeyValue"]
