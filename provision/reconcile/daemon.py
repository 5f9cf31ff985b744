"""The daemon: a level-triggered loop per group (serial within a group, parallel across groups),
a periodic full resync that re-reads the spec, lease renewal with fencing, metrics and health on
127.0.0.1, and a graceful stop: SIGTERM lets in-flight calls finish and journal their results.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision.errors import ProvisionError
from provision.reconcile.clock import Clock
from provision.reconcile.engine import Engine, PassResult
from provision.reconcile.journal import Store
from provision.reconcile.logs import log_event
from provision.reconcile.metrics import Metrics, serve_metrics
from provision.reconcile.provider import Provider, StaleEpochError
from provision.reconcile.spec import ClusterSpec, load_cluster_spec


@dataclass(frozen=True)
class DaemonOptions:
    interval: float
    resync: float
    listen: str | None
    lease_ttl: float = 15.0
    owner: str = "daemon"


class Daemon:
    """Keeps one cluster at its spec until ``stop`` is set."""

    def __init__(
        self,
        spec: ClusterSpec,
        providers: dict[str, Provider],
        store: Store,
        clock: Clock,
        options: DaemonOptions,
        *,
        stop: threading.Event | None = None,
        reload: Callable[[], ClusterSpec] | None = None,
    ) -> None:
        self.options = options
        self.clock = clock
        self.stop = stop or threading.Event()
        self.metrics = Metrics()
        self.engine = Engine(spec, providers, store, clock, owner=options.owner, stop=self.stop, metrics=self.metrics)
        self.reload = reload
        self.lost_lease = False
        self.listen_address: tuple[str, int] | None = None
        self.ready = threading.Event()
        self._wake: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._heartbeat = time.monotonic()

    def healthy(self) -> bool:
        fresh = time.monotonic() - self._heartbeat < 3 * self.options.interval + self.options.lease_ttl
        return fresh and not self.lost_lease and not self.stop.is_set()

    def run(self) -> int:
        """Run until stopped; 0 on a clean stop, 1 when the lease was lost to another daemon."""
        epoch = self.engine.acquire(self.options.lease_ttl)
        log_event("leader", cluster=self.engine.spec.name, owner=self.options.owner, epoch=epoch)
        server = serve_metrics(self.options.listen, self.metrics, self.healthy) if self.options.listen else None
        if server is not None:
            self.listen_address = (str(server.server_address[0]), int(server.server_address[1]))
            log_event("listening", address=f"{self.listen_address[0]}:{self.listen_address[1]}")
        self._start_groups()
        self.ready.set()
        last_resync = time.monotonic()
        try:
            while not self.stop.wait(min(self.options.interval, self.options.lease_ttl / 3)):
                self._heartbeat = time.monotonic()
                try:
                    self.engine.renew(self.options.lease_ttl)
                except StaleEpochError:
                    self._lose_lease()
                    break
                if time.monotonic() - last_resync >= self.options.resync:
                    last_resync = time.monotonic()
                    self._resync()
        finally:
            self.stop.set()
            for event in self._wake.values():
                event.set()
            for thread in self._threads.values():
                thread.join()  # each finishes its in-flight call and journals the result
            if not self.lost_lease:
                self.engine.release()
            if server is not None:
                server.shutdown()
            log_event("stopped", cluster=self.engine.spec.name, epoch=self.engine.epoch)
        return 1 if self.lost_lease else 0

    def _lose_lease(self) -> None:
        self.lost_lease = True
        self.stop.set()
        self.metrics.set("provision_leader_epoch", 0)
        log_event("lease-lost", logging.ERROR, cluster=self.engine.spec.name, epoch=self.engine.epoch)

    def _start_groups(self) -> None:
        for group in self.engine.spec.groups:
            if group.name in self._threads:
                continue
            self._wake[group.name] = threading.Event()
            thread = threading.Thread(target=self._group_loop, args=(group.name,), name=f"group-{group.name}")
            self._threads[group.name] = thread
            thread.start()

    def _resync(self) -> None:
        """Full resync: re-read the spec (a changed file becomes the new desired state) and wake
        every group for a full observation."""
        if self.reload is not None:
            try:
                spec = self.reload()
            except ProvisionError as exc:
                log_event("spec-invalid", logging.ERROR, error=str(exc))
            else:
                if spec.digest != self.engine.spec.digest:
                    self.engine.spec = spec
                    self.engine.images.clear()
                    self.engine.store.put_desired(spec.name, spec.digest, spec.source_text, self.engine.epoch)
                    log_event("spec-reloaded", cluster=spec.name, digest=spec.digest)
                    self._start_groups()
        for event in self._wake.values():
            event.set()

    def _group_loop(self, name: str) -> None:
        wake = self._wake[name]
        fast = max(0.05, self.options.interval / 10)
        while not self.stop.is_set():
            try:
                group = self.engine.spec.group(name)
            except KeyError:
                log_event("group-removed", logging.WARNING, group=name, note="its machines are left running")
                return
            delay = self.options.interval
            try:
                result = self.engine.reconcile_group(group)
                delay = self._next_delay(result, fast)
            except StaleEpochError:
                self._lose_lease()
                return
            except ProvisionError as exc:
                delay = self.engine.backoff.failed(f"{name}:pass")
                log_event("pass-failed", logging.ERROR, group=name, error=str(exc), retry_in=round(delay, 3))
            except Exception as exc:  # a bug must not kill the loop silently
                delay = self.engine.backoff.failed(f"{name}:pass")
                logging.getLogger("provision.reconcile").exception("pass crashed", extra={"fields": {"group": name}})
                log_event("pass-crashed", logging.ERROR, group=name, error=repr(exc))
            wake.wait(delay)
            wake.clear()

    def _next_delay(self, result: PassResult, fast: float) -> float:
        self.metrics.set("provision_group_converged", 1 if result.converged else 0, group=result.group)
        if result.converged:
            self.engine.backoff.succeeded(f"{result.group}:pass")
            return self.options.interval
        if result.errors:
            earliest = self.engine.backoff.earliest()
            wait = (earliest - self.clock.now()) if earliest is not None else fast
            return min(self.options.interval, max(fast, wait))
        return fast


def reloader(path: Path) -> Callable[[], ClusterSpec]:
    return lambda: load_cluster_spec(path)
