"""The simulated cloud over HTTP: the client provider maps each failure to its retry class."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reconcile_world import make_spec

from provision.clock import FakeClock
from provision.providers.simulated.client import HttpSimulatedProvider
from provision.providers.simulated.cloud import SimulatedCloud
from provision.providers.simulated.server import serve_simulated_cloud
from provision.reconcile.engine import Engine
from provision.reconcile.journal import SqliteStore
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_GROUP,
    CreateRequest,
    OutcomeUnknownError,
    Provider,
    RateLimitedError,
    StaleEpochError,
    TransientProviderError,
    list_all,
)

TAGS = {TAG_CLUSTER: "demo", TAG_GROUP: "web"}


@pytest.fixture
def served() -> Iterator[tuple[SimulatedCloud, HttpSimulatedProvider]]:
    cloud = SimulatedCloud(page_size=2)
    server = serve_simulated_cloud(cloud)
    yield cloud, HttpSimulatedProvider(f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()


def request(key: str, epoch: int = 1) -> CreateRequest:
    return CreateRequest(key, key, "img-1", {"flavor": "small"}, TAGS, epoch)


def test_http_provider_contract(served: tuple[SimulatedCloud, HttpSimulatedProvider]) -> None:
    cloud, provider = served
    assert isinstance(provider, Provider)
    first = provider.create_instance(request("k1"))
    assert provider.create_instance(request("k1")) == first  # idempotent by key
    for n in range(2, 6):
        provider.create_instance(request(f"k{n}"))
    found, pages = list_all(provider, TAGS)
    assert len(found) == 5 and pages == 3
    assert found[0].tags == TAGS  # tagged at birth
    provider.destroy_instance(first.id, 1)
    provider.destroy_instance(first.id, 1)  # idempotent
    assert len(list_all(provider, TAGS)[0]) == 4
    cloud.faults.create_timeout_rate = 1.0
    with pytest.raises(OutcomeUnknownError):
        provider.create_instance(request("k9"))
    assert len(cloud.live()) == 5  # it timed out after it succeeded
    cloud.faults.create_timeout_rate = 0.0
    assert provider.create_instance(request("k9")).name == "k9"  # the retry finds it
    assert len(cloud.live()) == 5
    provider.create_instance(request("k10", epoch=4))
    with pytest.raises(StaleEpochError):
        provider.create_instance(request("k11", epoch=3))
    cloud.faults.error_rate = 1.0
    raised: list[type[BaseException]] = []
    for _ in range(20):  # half the injected errors are 429, half 503
        with pytest.raises(TransientProviderError) as caught:
            list_all(provider, TAGS)
        raised.append(caught.type)
        if caught.type is RateLimitedError:
            assert caught.value.retry_after == 1.0  # the server's Retry-After reaches the engine
    assert set(raised) == {RateLimitedError, TransientProviderError}  # exactly these two classes


def test_engine_over_http_with_lag_and_timeouts(
    tmp_path: Path, served: tuple[SimulatedCloud, HttpSimulatedProvider]
) -> None:
    cloud, provider = served
    cloud.faults.list_lag = 2
    cloud.faults.create_timeout_rate = 0.4
    clock = FakeClock()
    store = SqliteStore(tmp_path / "j.db")
    engine = Engine(make_spec(5, health="{startupTimeout: 1s}"), {"sim": provider}, store, clock)
    engine.acquire()
    engine.converge(max_passes=100, between=lambda _n: clock.advance(2))
    assert len(cloud.live()) == 5 and cloud.stats.creates == 5
    store.close()
