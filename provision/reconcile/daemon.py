"""The daemon: a level-triggered loop per group (serial within a group, parallel across groups),
a periodic full resync that re-reads the spec, lease renewal with fencing, metrics and health on
127.0.0.1, and a graceful stop: SIGTERM lets in-flight calls finish and journal their results.

Everything is checked, and the listen port bound, before the lease is taken. A daemon that finds
the lease held stands by (its log and /healthz say so) and takes over when the lease expires, or
at once when the holder was a process on this host that no longer runs. A group thread that dies
makes /healthz fail until it is restarted; one that keeps dying ends the daemon.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

from provision.clock import Clock
from provision.errors import ProvisionError, UsageError
from provision.reconcile.engine import DestroyAllRefusedError, Engine, PassResult
from provision.reconcile.journal import LeaseHeldError, Store
from provision.reconcile.logs import log_event
from provision.reconcile.metrics import Metrics, serve_metrics
from provision.reconcile.provider import Provider, StaleEpochError
from provision.reconcile.spec import ClusterSpec, load_cluster_spec

MAX_WAIT = 3600.0  # no single wait is longer than this, whatever a spec says
RESTARTS = (
    3  # a group thread that dies more often than this (within RESTART_WINDOW) ends the daemon
)
RESTART_WINDOW = 600.0
RESTART_DELAY = 0.5  # seconds before the first restart of a dead group thread, doubling after each


@dataclass(frozen=True)
class DaemonOptions:
    interval: float
    resync: float
    listen: str | None
    lease_ttl: float = 15.0
    owner: str = "daemon"
    adopt: bool = False

    def check(self) -> None:
        """Refuse what cannot run, before anything is started."""
        for name, value in (
            ("interval", self.interval),
            ("resync", self.resync),
            ("lease time", self.lease_ttl),
        ):
            if not math.isfinite(value) or value <= 0 or value > MAX_WAIT * 24:
                raise UsageError(
                    f"daemon {name} must be a number of seconds above 0 and at most {MAX_WAIT * 24:g}, not {value:g}"
                )
        if self.listen is not None:
            parse_listen(self.listen)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0 picks one) -> (host, port); a clear error otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(
            f"listen address {text!r}: expected HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:9464)"
        )
    return host.strip("[]") or "127.0.0.1", int(port)


def bind_listen(
    listen: str, metrics: Metrics, health: Callable[[], tuple[bool, str]]
) -> ThreadingHTTPServer:
    host, port = parse_listen(listen)
    try:
        return serve_metrics(f"{host}:{port}", metrics, health)
    except OSError as exc:
        raise UsageError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc


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
        self.engine = Engine(
            spec,
            providers,
            store,
            clock,
            owner=options.owner,
            stop=self.stop,
            metrics=self.metrics,
            adopt=options.adopt,
        )
        self.reload = reload
        self.lost_lease = False
        self.failed = ""  # why the daemon gave up (a group thread kept dying)
        self.standby = ""  # who holds the lease while this daemon waits for it
        self.listen_address: tuple[str, int] | None = None
        self.ready = threading.Event()
        self._wake: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._dead: dict[
            str, tuple[str, float]
        ] = {}  # group -> (why its thread died, when), until restarted
        self._deaths: dict[str, list[float]] = {}
        self._heartbeat = time.monotonic()

    def health(self) -> tuple[bool, str]:
        """(healthy, what /healthz says)."""
        if self.failed:
            return False, f"failed: {self.failed}\n"
        if self.lost_lease:
            return False, "lease lost\n"
        if self.stop.is_set():
            return False, "stopping\n"
        if self.standby:
            return True, f"standby: {self.standby}\n"
        if self._dead:
            return False, "".join(
                f"group {g} thread died: {why}\n" for g, (why, _) in sorted(self._dead.items())
            )
        fresh = (
            time.monotonic() - self._heartbeat < 3 * self.options.interval + self.options.lease_ttl
        )
        return (True, "ok\n") if fresh else (False, "stalled\n")

    def healthy(self) -> bool:
        return self.health()[0]

    def run(self) -> int:
        """Run until stopped; 0 on a clean stop, 1 when the lease was lost to another daemon or a
        group thread kept dying."""
        self.options.check()
        refusal = self.engine.destroy_all_refusal()
        if refusal:
            raise DestroyAllRefusedError(
                refusal, hint="fix the spec, or remove the cluster with `provision down`"
            )
        server = (
            bind_listen(self.options.listen, self.metrics, self.health)
            if self.options.listen
            else None
        )
        try:
            if server is not None:
                self.listen_address = (str(server.server_address[0]), int(server.server_address[1]))
                log_event("listening", address=f"{self.listen_address[0]}:{self.listen_address[1]}")
            if not self._wait_for_lease():
                return 0
            return self._lead()
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()

    # errors of taking the lease that mean "held by another, or not reachable now": stand by
    standby_errors: tuple[type[Exception], ...] = (LeaseHeldError,)

    def _wait_for_lease(self) -> bool:
        """Take the lease, standing by while another daemon holds it; False when stopped first."""
        retry = min(1.0, self.options.lease_ttl / 5)
        while not self.stop.is_set():
            try:
                self._take_lease()
            except self.standby_errors as exc:
                if self.standby != str(exc):
                    log_event(
                        "standby",
                        cluster=self.engine.spec.name,
                        owner=self.options.owner,
                        holder=str(exc),
                    )
                self.standby = str(exc)
                self.ready.set()
                self.stop.wait(retry)
                continue
            self.standby = ""
            return True
        return False

    def _take_lease(self) -> None:
        """One try at the cluster's lease (raises one of ``standby_errors`` while it is held)."""
        epoch = self.engine.acquire(self.options.lease_ttl)
        log_event("leader", cluster=self.engine.spec.name, owner=self.options.owner, epoch=epoch)

    def _lead(self) -> int:
        """Keep the groups' threads running, check the lease every ``_check_interval()``, resync
        every ``options.resync``; on stop, let every thread finish its pass, then step down."""
        self._heartbeat = time.monotonic()
        self._resync()  # a daemon that stood by re-reads the spec it may have waited long on; starts the groups
        self.ready.set()
        last_resync = time.monotonic()
        try:
            while not self.stop.wait(self._check_interval()):
                self._heartbeat = time.monotonic()
                if not self._still_leading():
                    self._lose_lease()
                    break
                self._restart_dead_groups()
                if time.monotonic() - last_resync >= self.options.resync:
                    last_resync = time.monotonic()
                    self._resync()
        finally:
            self.stop.set()
            for event in self._wake.values():
                event.set()
            for thread in self._threads.values():
                thread.join()  # each finishes its in-flight call and journals the result
            self._step_down()
        return 1 if self.lost_lease or self.failed else 0

    def _check_interval(self) -> float:
        return min(self.options.interval, self.options.lease_ttl / 3)

    def _still_leading(self) -> bool:
        """Renew what lets this daemon act; False when it has lost it."""
        try:
            self.engine.renew(self.options.lease_ttl)
        except StaleEpochError:
            return False
        return True

    def _step_down(self) -> None:
        """Every group thread has ended: give up the lease (unless lost already)."""
        if not self.lost_lease:
            self.engine.release()
        log_event("stopped", cluster=self.engine.spec.name, epoch=self.engine.epoch)

    def _lose_lease(self) -> None:
        self.lost_lease = True
        self.stop.set()
        self.metrics.set("provision_leader_epoch", 0)
        log_event(
            "lease-lost", logging.ERROR, cluster=self.engine.spec.name, epoch=self.engine.epoch
        )

    def _start_groups(self) -> None:
        """A thread for each group this daemon ``owns`` that has none running."""
        for group in self.engine.groups():
            if not self.owns(group.name):
                continue
            thread = self._threads.get(group.name)
            if thread is not None and thread.is_alive():
                continue
            self._wake.setdefault(group.name, threading.Event())
            thread = threading.Thread(
                target=self._group_thread, args=(group.name,), name=f"group-{group.name}"
            )
            self._threads[group.name] = thread
            thread.start()

    def _restart_dead_groups(self) -> None:
        """Restart the threads that died (each at most RESTARTS times in RESTART_WINDOW);
        beyond that, end the daemon: a loop that cannot run must not look healthy."""
        now = time.monotonic()
        for name, (why, died) in sorted(self._dead.items()):
            deaths = [t for t in self._deaths.get(name, []) if now - t < RESTART_WINDOW]
            self._deaths[name] = deaths
            if len(deaths) > RESTARTS:
                self.failed = f"group {name} thread died {len(deaths)} times, last: {why}"
                log_event(
                    "daemon-failed",
                    logging.ERROR,
                    cluster=self.engine.spec.name,
                    group=name,
                    error=why,
                )
                self.stop.set()
                return
            if now - died < RESTART_DELAY * 2 ** (len(deaths) - 1):
                continue
            del self._dead[name]
            log_event("group-restarted", logging.WARNING, group=name, deaths=len(deaths))
            self._start_groups()

    def _resync(self) -> None:
        """Full resync: re-read the spec (a changed file becomes the new desired state), resolve
        every group's image again (an edited image spec, or a tag that moved, rolls out) and wake
        every group for a full observation. A spec that removes every group is refused."""
        if self.reload is not None:
            try:
                spec = self.reload()
            except ProvisionError as exc:
                log_event("spec-invalid", logging.ERROR, error=str(exc))
            except Exception as exc:  # a bug reading the spec must not end a long-running daemon
                logging.getLogger("provision.reconcile").exception("spec reload crashed")
                log_event("spec-invalid", logging.ERROR, error=repr(exc))
            else:
                if spec.digest != self.engine.spec.digest:
                    refusal = self.engine.destroy_all_refusal(spec)
                    if refusal:
                        log_event(
                            "spec-refused",
                            logging.ERROR,
                            cluster=spec.name,
                            error=refusal,
                            note="keeping the previous spec",
                        )
                    else:
                        self.engine.spec = spec
                        self.engine.images.spec = spec
                        self.engine._record_spec(spec)
                        log_event("spec-reloaded", cluster=spec.name, digest=spec.digest)
        self.engine.images.clear()
        self._start_groups()
        for event in self._wake.values():
            event.set()

    def _group_thread(self, name: str) -> None:
        try:
            self._group_loop(name)
        except BaseException as exc:  # noqa: BLE001 (recorded: /healthz fails, the thread is restarted)
            if not self.stop.is_set():
                self._deaths.setdefault(name, []).append(time.monotonic())
                self._dead[name] = (repr(exc), time.monotonic())
                logging.getLogger("provision.reconcile").error(
                    "group-died",
                    exc_info=True,
                    extra={"fields": {"group": name, "error": repr(exc)}},
                )

    def _group_loop(self, name: str) -> None:
        wake = self._wake[name]
        fast = max(0.05, self.options.interval / 10)
        while not self.stop.is_set() and self.owns(name):
            group = next((g for g in self.engine.groups() if g.name == name), None)
            if group is None:
                return  # removed from the spec and its machines are gone (retired)
            delay = self.options.interval
            try:
                result = self.engine.reconcile_group(group)
                delay = self._next_delay(result, fast)
            except StaleEpochError:
                self._lose_lease()
                return
            except ProvisionError as exc:
                delay = self.engine.backoff.failed(f"{name}:pass")
                log_event(
                    "pass-failed",
                    logging.ERROR,
                    group=name,
                    error=str(exc),
                    retry_in=round(delay, 3),
                )
            except Exception as exc:  # a bug must not kill the loop silently
                delay = self.engine.backoff.failed(f"{name}:pass")
                logging.getLogger("provision.reconcile").exception(
                    "pass crashed", extra={"fields": {"group": name}}
                )
                log_event("pass-crashed", logging.ERROR, group=name, error=repr(exc))
            wake.wait(min(max(delay, 0.0), MAX_WAIT))
            wake.clear()

    def owns(self, group: str) -> bool:
        """Whether this daemon acts for ``group`` (a lone daemon: every group of the cluster)."""
        return True

    def _next_delay(self, result: PassResult, fast: float) -> float:
        self.metrics.set(
            "provision_group_converged", 1 if result.converged else 0, group=result.group
        )
        if result.converged:
            self.engine.backoff.succeeded(f"{result.group}:pass")
            return self.options.interval
        if result.errors:
            earliest = self.engine.backoff.earliest()
            wait = (earliest - self.clock.now()) if earliest is not None else fast
            return min(self.options.interval, max(fast, wait))
        return fast


SPEC_SETTLE = 0.2  # seconds a just-written spec file must stay unchanged before it is taken


def reloader(
    path: Path, settle: float = SPEC_SETTLE, pause: Callable[[float], None] = time.sleep
) -> Callable[[], ClusterSpec]:
    """Read the cluster spec for a resync. A file written within the last ``settle`` seconds is
    read again after that pause and taken only when both reads agree: an editor, `cp` or a
    config-management run still writing it would otherwise hand the daemon part of a spec, and a
    spec cut off between two groups is valid and removes the groups after the cut."""

    def load() -> ClusterSpec:
        spec = load_cluster_spec(path)
        try:
            written = path.stat().st_mtime
        except OSError as exc:  # removed or replaced right after the read
            raise ProvisionError(f"{path}: {exc.strerror}; keeping the previous spec") from None
        if time.time() - written >= settle:
            return spec
        pause(settle)
        again = load_cluster_spec(path)
        if again.source_text != spec.source_text:
            raise ProvisionError(
                f"{path}: changed while being read; keeping the previous spec until the next resync",
                hint="write the spec to a temporary file and rename it into place",
            )
        return again

    return load
