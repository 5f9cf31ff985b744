"""The gcp provider beyond the contract suite: what reaches the instances.insert body, which
failures are permanent (with GCP's message as the hint), options checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gcp.gce_fake import FakeGce, serve_fake_gce
from gcp.gcp_testkit import PROJECT, ZONE

from provision.clock import SystemClock
from provision.errors import UsageError
from provision.providers import get_target
from provision.providers.gcp.provider import GcpProvider, instance_name
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_GROUP,
    CreateRequest,
    OutcomeUnknownError,
    ProviderError,
    RateLimitedError,
    TransientProviderError,
)
from provision.reconcile.spec import ProviderSpec

TAGS = {TAG_CLUSTER: "demo", TAG_GROUP: "web", "provision-slot": "00001", "provision-epoch": "1"}


@pytest.fixture
def fake() -> Iterator[FakeGce]:
    with serve_fake_gce(slow=1.0) as served:
        yield served


def _provider(fake: FakeGce, tmp_path: Path, **options: object) -> GcpProvider:
    spec = ProviderSpec(
        "gce",
        "gcp",
        options={
            "project": PROJECT,
            "zone": ZONE,
            "endpoint": fake.url,
            "anonymous": True,
            "requestTimeout": "0.5s",
            **options,
        },
        base=tmp_path,
    )
    made = get_target("gcp").create_provider(spec, SystemClock())
    assert isinstance(made, GcpProvider)
    return made


def _request(properties: dict[str, object], key: str = "demo/web/00001/1") -> CreateRequest:
    return CreateRequest(key, "demo-web-00001", "web-0123456789ab", properties, TAGS, 1)


def test_properties_reach_the_insert_body(fake: FakeGce, tmp_path: Path) -> None:
    provider = _provider(fake, tmp_path)
    props = {
        "machineType": "e2-small",
        "network": "global/networks/lab",
        "subnetwork": "regions/us-central1/subnetworks/a",
        "serviceAccount": "daemon@provision-test.iam.gserviceaccount.com",
        "disk": {"sizeGb": 20, "type": "pd-ssd"},
        "provisioning": "spot",
        "networkTags": ["web"],
        "metadata": {"user-data": "#cloud-config\n"},
    }
    made = provider.create_instance(_request(props))
    assert (
        made.name == instance_name("demo/web/00001/1", "demo-web-00001")
        and made.image == "web-0123456789ab"
    )
    body = provider.clients.instances.get(project=PROJECT, zone=ZONE, instance=made.id)
    assert body.machine_type.endswith("zones/us-central1-a/machineTypes/e2-small")
    assert dict(body.labels) == TAGS
    (disk,) = body.disks
    assert disk.boot and disk.auto_delete
    assert (
        disk.initialize_params.source_image == f"projects/{PROJECT}/global/images/web-0123456789ab"
    )
    assert disk.initialize_params.disk_size_gb == 20 and disk.initialize_params.disk_type.endswith(
        "diskTypes/pd-ssd"
    )
    assert body.network_interfaces[0].network == "global/networks/lab"
    assert body.network_interfaces[0].subnetwork == "regions/us-central1/subnetworks/a"
    assert body.service_accounts[0].email.startswith("daemon@")
    assert body.scheduling.provisioning_model == "SPOT" and list(body.tags.items) == ["web"]
    assert {i.key: i.value for i in body.metadata.items}["user-data"] == "#cloud-config\n"
    assert provider.address(made, 7080) == (body.network_interfaces[0].network_i_p, 7080)
    assert fake.count("zoneOperations.wait") >= 1


def test_a_retried_create_sends_the_same_request_id(fake: FakeGce, tmp_path: Path) -> None:
    provider = _provider(fake, tmp_path)
    fake.next_fault = "timeout"
    with pytest.raises(OutcomeUnknownError):
        provider.create_instance(_request({"machineType": "e2-small"}))
    again = provider.create_instance(_request({"machineType": "e2-small"}))
    assert len(fake.instances) == 1 and len(fake.by_request) == 1
    assert again.tags == TAGS


@pytest.mark.parametrize(
    ("fault", "text"),
    [
        ("quota", "Quota 'CPUS' exceeded"),
        ("403", "Required 'compute.instances.create' permission"),
    ],
)
def test_quota_and_permission_errors_are_permanent_with_gcp_s_message(
    fake: FakeGce, tmp_path: Path, fault: str, text: str
) -> None:
    provider = _provider(fake, tmp_path)
    fake.next_fault = fault
    with pytest.raises(ProviderError) as caught:
        provider.create_instance(_request({"machineType": "e2-small"}))
    assert not isinstance(caught.value, TransientProviderError)
    assert text in (caught.value.hint or "")


def test_a_failed_zone_operation_is_reported_with_its_error(fake: FakeGce, tmp_path: Path) -> None:
    provider = _provider(fake, tmp_path)
    fake.inject("instances.insert.operation", "operation-error")
    with pytest.raises(ProviderError) as caught:
        provider.create_instance(_request({"machineType": "e2-small"}))
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in (caught.value.hint or "")


def test_a_rate_limit_carries_retry_after(fake: FakeGce, tmp_path: Path) -> None:
    provider = _provider(fake, tmp_path)
    fake.next_fault = "429"
    with pytest.raises(RateLimitedError) as caught:
        provider.list_instances({TAG_CLUSTER: "demo"})
    assert caught.value.retry_after == 0.0  # the fake's Retry-After: 0


def test_options_are_checked(fake: FakeGce, tmp_path: Path) -> None:
    target = get_target("gcp")
    with pytest.raises(UsageError, match="options: missing required key 'zone'"):
        target.create_provider(
            ProviderSpec("gce", "gcp", options={"project": PROJECT}, base=tmp_path), SystemClock()
        )
    with pytest.raises(UsageError, match="anonymous needs options.endpoint"):
        target.create_provider(
            ProviderSpec(
                "gce",
                "gcp",
                options={"project": PROJECT, "zone": ZONE, "anonymous": True},
                base=tmp_path,
            ),
            SystemClock(),
        )
