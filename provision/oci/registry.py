"""The registry client callers hold: one object for pulls and pushes over one transport.

The parts: :mod:`provision.oci.transport` (endpoints, plain-http rules, authentication,
retries), :mod:`provision.oci.pull` (manifests and blobs in, verified, parallel and
resumable), :mod:`provision.oci.push` (blobs and manifests out).
"""

from __future__ import annotations

from collections.abc import Sequence

import requests

from provision.oci.auth import CredentialStore
from provision.oci.config import RegistryConfig, check_parallel, load_registry_config
from provision.oci.model import Platform, ResolvedImage
from provision.oci.progress import ProgressFn
from provision.oci.pull import pull_image
from provision.oci.push import DEFAULT_CHUNK, push_image
from provision.oci.store import ImageStore
from provision.oci.transport import RegistryTransport
from provision.reference import ImageRef
from provision.retry import RetryPolicy


class RegistryClient:
    """Pulls into and pushes from the image store. Inject ``config``, ``credentials``,
    ``session`` and ``retry`` (with its clock) in tests. ``parallel`` (default: the
    registries file's ``parallel``, else 4) is how many blobs of an image download at once."""

    def __init__(
        self,
        config: RegistryConfig | None = None,
        credentials: CredentialStore | None = None,
        session: requests.Session | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        parallel: int | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        config = config if config is not None else load_registry_config()
        self.parallel = check_parallel(
            parallel if parallel is not None else config.parallel, "parallel"
        )
        self.transport = RegistryTransport(
            config,
            credentials,
            session,
            timeout=timeout,
            retry=retry,
            connections=max(16, self.parallel),
        )
        self.chunk_size = chunk_size

    @property
    def config(self) -> RegistryConfig:
        return self.transport.config

    def base_url(self, registry: str) -> str:
        return self.transport.base_url(registry)

    def pull_endpoints(self, registry: str) -> list[str]:
        return self.transport.pull_endpoints(registry)

    def pull(
        self,
        store: ImageStore,
        ref: ImageRef | str,
        platform: Platform | None = None,
        *,
        progress: ProgressFn | None = None,
    ) -> ResolvedImage:
        """Pull ``ref`` for ``platform`` (default: the host) into ``store`` and tag it."""
        return pull_image(
            self.transport, store, ref, platform, progress=progress, parallel=self.parallel
        )

    def push(
        self,
        store: ImageStore,
        source: ImageRef | str,
        target: ImageRef | str,
        *,
        progress: ProgressFn | None = None,
    ) -> str:
        """Push the image (or whole index) ``source`` names in the store to ``target``.
        Returns the pushed manifest's digest."""
        return push_image(
            self.transport, store, source, target, progress=progress, chunk_size=self.chunk_size
        )


def default_client() -> RegistryClient:
    return RegistryClient()


__all__: Sequence[str] = ["RegistryClient", "default_client"]
