"""Helpers for tests that run ``provision daemon`` as real processes against the simulated cloud
served over HTTP: a cloud that records who made each mutating call, and a daemon process whose
JSON log is read as it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from provision.providers.simulated.cloud import SimulatedCloud
from provision.reconcile.provider import (
    TAG_GROUP,
    CreateRequest,
    Instance,
    StaleEpochError,
    TransientProviderError,
)


@dataclass(frozen=True)
class Call:
    at: float  # time.monotonic() when the call was accepted
    op: str  # "create" | "destroy"
    epoch: int
    group: str = ""


class RecordingCloud(SimulatedCloud):
    """The simulated cloud, recording every mutating call it accepted (with the caller's epoch,
    which names the leader that made it) and every one it refused as stale."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[Call] = []
        self.refused: list[Call] = []
        self._calls_lock = threading.Lock()
        self.stall: tuple[int, int] | None = (
            None  # (epoch, n): that epoch's creates after the n-th hang
        )
        self.stalled = threading.Event()  # a create is hanging
        self.thaw = threading.Event()  # ... until this is set, then it fails with a 503

    def _note(self, op: str, epoch: int, accepted: bool, group: str = "") -> None:
        with self._calls_lock:
            (self.calls if accepted else self.refused).append(
                Call(time.monotonic(), op, epoch, group)
            )

    def create(self, request: CreateRequest) -> Instance:
        if self.stall is not None and request.epoch == self.stall[0]:
            with self._calls_lock:
                made = sum(1 for c in self.calls if c.op == "create" and c.epoch == request.epoch)
            if made >= self.stall[1]:
                self._note("create", request.epoch, True)  # made while its daemon still ran
                self.stalled.set()
                self.thaw.wait(60)
                raise TransientProviderError("simulated: the cloud stalled and gave up")
        group = request.tags.get(TAG_GROUP, "")
        try:
            instance = super().create(request)
        except StaleEpochError:
            self._note("create", request.epoch, False, group)
            raise
        except Exception:
            self._note(
                "create", request.epoch, True, group
            )  # timed out after it was made (or failed)
            raise
        self._note("create", request.epoch, True, group)
        return instance

    def destroy(self, instance_id: str, epoch: int) -> None:
        found = self.get(instance_id)
        group = found.tags.get(TAG_GROUP, "") if found is not None else ""
        try:
            super().destroy(instance_id, epoch)
        except StaleEpochError:
            self._note("destroy", epoch, False, group)
            raise
        self._note("destroy", epoch, True, group)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def daemon_argv(
    spec: Path, journal: Path | str, *extra: str, interval: float, resync: float
) -> list[str]:
    """``python -m provision daemon SPEC`` on ``journal``, listening on a free port of
    127.0.0.1, passes every ``interval`` seconds, a full resync every ``resync``."""
    return [
        sys.executable,
        "-m",
        "provision",
        "daemon",
        str(spec),
        "--journal",
        str(journal),
        "--listen",
        "127.0.0.1:0",
        "--interval",
        str(interval),
        "--resync",
        str(resync),
        *extra,
    ]


class DaemonProcess:
    """``provision daemon SPEC`` in a subprocess; ``events`` fills from its JSON log."""

    def __init__(
        self,
        spec: Path,
        journal: Path | str,
        *extra: str,
        interval: float = 0.05,
        resync: float = 1.0,
    ) -> None:
        argv = daemon_argv(spec, journal, *extra, interval=interval, resync=resync)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.proc = subprocess.Popen(
            argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue  # not a log line (an error message): kept in lines

    def has(self, event: str) -> bool:
        return any(e.get("event") == event for e in list(self.events))

    def wait_event(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        wait_for(lambda: self.has(event) or self.proc.poll() is not None, timeout, event)
        assert self.has(event), (
            f"daemon ended ({self.proc.returncode}) without {event!r}: {''.join(self.lines)[-2000:]}"
        )
        return next(e for e in list(self.events) if e.get("event") == event)

    def healthz(self) -> tuple[int, str]:
        address = self.wait_event("listening")["address"]
        answer = requests.get(f"http://{address}/healthz", timeout=5)
        return answer.status_code, answer.text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        return code
