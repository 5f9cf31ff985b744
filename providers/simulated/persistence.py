"""A simulated cloud that outlives the process: kept in a JSON file (``options.state``), saved
after every mutating call through the cloud's public snapshot/restore."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from provision.clock import Clock
from provision.errors import ProvisionError
from provision.fsutil import write_bytes_atomic
from provision.providers.simulated.cloud import SimulatedCloud, SimulatedProvider
from provision.reconcile.provider import CreateRequest, Instance


def save_cloud(cloud: SimulatedCloud, path: str) -> None:
    """Write the cloud's state to ``path`` (temp name, then rename)."""
    from pathlib import Path

    write_bytes_atomic(Path(path), json.dumps(cloud.snapshot()).encode())


def load_cloud(path: str, clock: Clock | None = None, **kwargs: Any) -> SimulatedCloud:
    """The cloud saved in ``path`` (a new, empty one when there is no such file)."""
    cloud = SimulatedCloud(clock, **kwargs)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # opening a FIFO would block
            raise ProvisionError(
                f"simulated cloud state {path}: not a regular file",
                hint="options.state names the simulated cloud's own JSON file",
            )
        with open(path, "rb") as handle:
            body = json.loads(handle.read())
    except FileNotFoundError:
        return cloud
    except (OSError, ValueError) as exc:
        raise ProvisionError(
            f"simulated cloud state {path}: cannot read it ({exc})",
            hint="remove the file to start an empty simulated cloud",
        ) from exc
    try:
        cloud.restore(body)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProvisionError(
            f"simulated cloud state {path}: not a saved simulated cloud ({type(exc).__name__}: {exc})",
            hint="remove the file to start an empty simulated cloud",
        ) from exc
    return cloud


class FileSimulatedProvider(SimulatedProvider):
    """A simulated cloud kept in a JSON file, saved after every mutating call."""

    def __init__(
        self,
        path: str,
        clock: Clock | None = None,
        name: str = "simulated",
        *,
        page_size: int = 500,
    ) -> None:
        super().__init__(load_cloud(path, clock, page_size=page_size), name)
        self.path = path

    def create_instance(self, request: CreateRequest) -> Instance:
        try:
            return super().create_instance(request)
        finally:
            save_cloud(self.cloud, self.path)

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        try:
            super().destroy_instance(instance_id, epoch)
        finally:
            save_cloud(self.cloud, self.path)

    def register_image(self, digest: str) -> tuple[str, bool]:
        try:
            return self.cloud.register_image(digest)
        finally:
            save_cloud(self.cloud, self.path)
