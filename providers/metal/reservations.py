"""Which machine of the inventory a cluster holds, and what it boots: ``reservations.json`` in
the metal state directory, written by the metal provider and read by ``provision serve``.

Each reservation is named by the create's idempotency key (a retried create finds the machine
the first one reserved), carries the ownership tags, and names the image (a digest published
into ``STATE/images/``) the machine network-boots, the disk image it installs on its local disk
(if it has one) and the wipe profile its destroy boots first (if the group names one). Every change runs under an exclusive
``flock`` on ``reservations.lock`` and replaces the file atomically, so the provider, a second
provider process and the server never see a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError
from provision.fsutil import write_bytes_atomic

FILE = "reservations.json"
LOCK = "reservations.lock"


@dataclass(frozen=True)
class Reservation:
    key: str
    machine: str
    image: str
    name: str = ""  # the engine's machine name: the hostname it boots with
    tags: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    install: str = ""  # the served path of the disk image to install on the machine's disk
    wipe: str = ""  # the lab profile destroy boots first (wipes the disk, then powers off)
    wiping: str = ""  # the wipe profile being booted (by destroy, or before a create's boot)
    released: bool = False  # destroyed for a re-image: free, kept for its slot's next create
    user_data: str = ""  # the group's userData (a JSON tree as its JSON text), served as metadata
    ssh_keys: tuple[str, ...] = ()  # the group's sshKeys, served as metadata


def read_reservations(state: Path) -> dict[str, Reservation]:
    """Reservations by machine name (empty when there is no file yet)."""
    try:
        body = json.loads((state / FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ProvisionError(
            f"{state / FILE}: unreadable ({exc})",
            hint="it is provision's own file: restore it or remove it",
        ) from exc
    try:
        return {
            str(r["machine"]): Reservation(
                str(r["key"]),
                str(r["machine"]),
                str(r["image"]),
                str(r["name"]),
                {str(k): str(v) for k, v in dict(r["tags"]).items()},
                float(r["created_at"]),
                str(r.get("install", "")),
                str(r.get("wipe", "")),
                str(r.get("wiping", "")),
                bool(r.get("released", False)),
                str(r.get("user_data", "")),
                tuple(str(k) for k in r.get("ssh_keys", ())),
            )
            for r in body["reservations"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ProvisionError(f"{state / FILE}: not a reservations file ({exc})") from exc


@contextlib.contextmanager
def locked_reservations(state: Path) -> Iterator[dict[str, Reservation]]:
    """The reservations, for changing: written back (atomically) when the block succeeds."""
    state.mkdir(parents=True, exist_ok=True)
    with open(state / LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = read_reservations(state)
        before = dict(current)
        yield current
        if current != before:
            body: dict[str, Any] = {
                "reservations": [
                    asdict(r) for r in sorted(current.values(), key=lambda r: r.machine)
                ]
            }
            write_bytes_atomic(
                state / FILE, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
            )
