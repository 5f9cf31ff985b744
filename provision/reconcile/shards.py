"""Several daemons on one etcd journal, each owning a shard of the cluster's groups.

Each daemon joins as a member (``members/OWNER``, bound to its etcd lease, refused while an
exclusive ``apply``/``down`` holds the cluster). Groups are spread over the live members by
rendezvous hashing of ``group`` and member names (a join or a leave moves only the groups that
hash to that member). A daemon owns a group through ``owner/GROUP``, created with its lease only
while no one holds it; the key's create revision is the group's fencing token: every journal
write of the group is fenced by it and every provider call carries it.

- Renewal: a thread refreshes the lease every TTL/3. The daemon acts only until a local deadline
  (the send time of the last successful refresh + 0.8 TTL): past it, provider calls are refused
  before they leave, and the daemon steps down, before etcd can expire the lease and give its
  groups to another (no two actors at once).
- Hand-off (a member joined): the owner lets the group's thread finish its pass, then deletes the
  owner key (fenced by its token); the new owner claims it only then. Between the two, nobody
  owns the group: never two.
- A dead daemon: its lease expires after TTL, its owner keys with it; the survivors see the
  groups unowned at their next check (every second at most) and claim the ones that hash to them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from provision.clock import Clock
from provision.reconcile.daemon import Daemon, DaemonOptions
from provision.reconcile.etcd.client import EtcdError
from provision.reconcile.etcd.store import EtcdStore
from provision.reconcile.journal import LeaseHeldError
from provision.reconcile.logs import log_event
from provision.reconcile.provider import Provider, StaleEpochError
from provision.reconcile.spec import ClusterSpec

LOCAL_DEADLINE = 0.8  # of the TTL, from the send time of the last successful renewal


def shard_owner(group: str, members: Sequence[str]) -> str:
    """The member that should own ``group``: rendezvous (highest random weight) hashing."""
    return (
        max(members, key=lambda m: hashlib.sha256(f"{group}\0{m}".encode()).digest())
        if members
        else ""
    )


class ShardedDaemon(Daemon):
    """A daemon that owns the groups that hash to it among the live members in etcd."""

    def __init__(
        self,
        spec: ClusterSpec,
        providers: dict[str, Provider],
        store: EtcdStore,
        clock: Clock,
        options: DaemonOptions,
        *,
        stop: threading.Event | None = None,
        reload: Callable[[], ClusterSpec] | None = None,
    ) -> None:
        self._deadline = 0.0  # time.monotonic() past which this daemon must not act
        self._lease_gone = False
        super().__init__(spec, providers, store, clock, options, stop=stop, reload=reload)
        self.shards = store
        for provider in self.engine.providers.values():
            provider.guard = self._guard
        self.lease = 0
        self.member_epoch = 0
        self._owned: dict[str, int] = {}  # group -> its token
        self._leaving: set[str] = set()
        self._owned_lock = threading.Lock()

    # -- acting or not -------------------------------------------------------------------

    def acting(self) -> bool:
        return not self._lease_gone and time.monotonic() < self._deadline

    def _guard(self) -> None:
        if not self.acting():
            raise StaleEpochError(
                f"daemon {self.options.owner}: no lease renewal within {LOCAL_DEADLINE * self.options.lease_ttl:.1f}s; not acting",
                hint="its lease may have expired and its groups moved to another daemon",
            )

    def owns(self, group: str) -> bool:
        with self._owned_lock:
            return group in self._owned and group not in self._leaving

    def owned(self) -> dict[str, int]:
        with self._owned_lock:
            return dict(self._owned)

    # -- joining -----------------------------------------------------------------------------

    standby_errors = (LeaseHeldError, EtcdError)

    def _take_lease(self) -> None:
        """Join as a member (bound to a fresh lease) and keep the lease renewed."""
        cluster = self.engine.spec.name
        sent = time.monotonic()
        self.member_epoch, self.lease = self.shards.join(
            cluster, self.options.owner, self.options.lease_ttl
        )
        self._deadline = sent + LOCAL_DEADLINE * self.options.lease_ttl
        self.engine.epoch = self.member_epoch
        self.engine._record_spec(self.engine.spec)
        self.metrics.set("provision_member_epoch", self.member_epoch)
        log_event("member", cluster=cluster, owner=self.options.owner, epoch=self.member_epoch)
        threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True).start()

    def _renew_loop(self) -> None:
        period = self.options.lease_ttl / 3
        while not self.stop.wait(period):
            sent = time.monotonic()
            try:
                remaining = self.shards.client.keepalive(self.lease, timeout=period)
            except EtcdError as exc:
                log_event("renew-failed", logging.WARNING, owner=self.options.owner, error=str(exc))
                continue  # the local deadline decides
            if remaining <= 0:
                self._lease_gone = True
                log_event(
                    "lease-expired",
                    logging.ERROR,
                    owner=self.options.owner,
                    lease=f"{self.lease:x}",
                )
                return
            self._deadline = max(self._deadline, sent + LOCAL_DEADLINE * self.options.lease_ttl)

    # -- leading a shard -----------------------------------------------------------------------

    def _lead(self) -> int:
        self._heartbeat = time.monotonic()
        self._rebalance()  # claim this daemon's groups before the first resync starts them
        return super()._lead()

    def _check_interval(self) -> float:
        return min(self.options.interval, self.options.lease_ttl / 5, 1.0)

    def _still_leading(self) -> bool:
        """Within the local deadline and still a member: hand off and claim groups as the
        members changed."""
        self.metrics.set("provision_etcd_requests_total", self.shards.round_trips)
        if not self.acting():
            return False
        try:
            self._rebalance()
        except StaleEpochError:
            return False
        except EtcdError as exc:
            log_event(
                "rebalance-failed",
                logging.WARNING,
                owner=self.options.owner,
                error=str(exc),
            )
        return True

    def _step_down(self) -> None:
        """Leave: release every group, then revoke the lease (the others take over at once)."""
        for group in list(self.owned()):
            self._drop(group)
        if not self.lost_lease:
            try:
                self.shards.client.revoke(
                    self.lease
                )  # deletes the member key; the others take over at once
            except EtcdError as exc:
                log_event("leave-failed", logging.WARNING, owner=self.options.owner, error=str(exc))
        log_event(
            "stopped",
            cluster=self.engine.spec.name,
            owner=self.options.owner,
            epoch=self.member_epoch,
        )

    def _drop(self, group: str) -> None:
        """Forget ``group`` here (its thread has ended), then release its owner key."""
        with self._owned_lock:
            token = self._owned.pop(group, None)
            self._leaving.discard(group)
        self.engine.epochs.pop(group, None)
        self.metrics.set("provision_group_owned", 0, group=group, owner=self.options.owner)
        if token is None:
            return
        if self.lost_lease or not self.acting():
            self.shards.forget_epoch(token)
            return
        try:
            self.shards.release_group(self.engine.spec.name, group, token)
        except EtcdError as exc:  # the lease's end releases it anyway
            log_event("release-failed", logging.WARNING, group=group, error=str(exc))
        log_event("group-released", group=group, owner=self.options.owner, epoch=token)

    def _rebalance(self) -> None:
        cluster, me = self.engine.spec.name, self.options.owner
        members = self.shards.members(cluster)
        if me not in members:
            raise StaleEpochError(
                f"daemon {me} is no longer a member of cluster {cluster!r}",
                hint="its lease expired",
            )
        owners = self.shards.group_owners(cluster)
        names = [g.name for g in self.engine.groups()]
        wanted = {g for g in names if shard_owner(g, members) == me}
        self.metrics.set("provision_shard_members", len(members))
        for group, token in self.owned().items():
            if (
                owners.get(group, ("", 0))[1] != token
            ):  # the key is gone (never seen while the lease lives)
                raise StaleEpochError(f"group {group}: owner key lost", hint="its lease expired")
            with self._owned_lock:
                leaving = group in self._leaving
            if group not in wanted or leaving:  # a hand-off once begun is finished (then reclaimed)
                self._hand_off(group)
        for group in sorted(wanted - set(self.owned())):
            if group in owners or not self.acting():
                continue  # its owner is still handing it off, or its lease is about to end
            claimed = self.shards.claim_group(cluster, group, me, self.member_epoch)
            if claimed is None:
                continue
            self.engine.epochs[group] = claimed
            with self._owned_lock:
                self._owned[group] = claimed
            self.metrics.set("provision_group_owned", 1, group=group, owner=me)
            self.metrics.set("provision_group_epoch", claimed, group=group)
            log_event("group-claimed", group=group, owner=me, epoch=claimed)
            self._start_groups()

    def _hand_off(self, group: str) -> None:
        """Another member should own ``group``: stop its thread after the pass, then release it."""
        with self._owned_lock:
            self._leaving.add(group)
        thread = self._threads.get(group)
        if thread is not None and thread.is_alive():
            self._wake.setdefault(group, threading.Event()).set()
            return  # released at a later check, once the pass is over
        self._drop(group)
