"""The azure provider against the fake ARM server, beyond the shared contract: what the PUT
bodies carry, nothing left behind by a delete (even when the platform keeps the disk and NIC),
the NIC's address, refusals with Azure's message, the cluster-spec schemas, and no token in any
log or message."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest
from arm_testkit import GROUP, LOCATION, SUBSCRIPTION, Arm

from provision.errors import SpecError
from provision.providers.azure.provider import AzureProvider, vm_name
from provision.reconcile.provider import (
    TAG_CLUSTER,
    CreateRequest,
    OutcomeUnknownError,
    ProviderError,
    TransientProviderError,
    list_all,
)
from provision.reconcile.spec import load_cluster_spec, parse_cluster_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SUBNET = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
IMAGE = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/images/web"
)


def _provider(arm: Arm, token: str | None = None) -> AzureProvider:
    return AzureProvider(
        "az", arm.clients(token) if token else arm.clients(), GROUP, LOCATION, {"subnetId": SUBNET}
    )


def _request(slot: int, **properties: object) -> CreateRequest:
    tags = {TAG_CLUSTER: "c", "provision-group": "web", "provision-slot": f"{slot:05d}"}
    return CreateRequest(
        f"c/web/{slot:05d}/1",
        f"c-web-{slot:05d}",
        IMAGE,
        {"vmSize": "Standard_B2s", **properties},
        tags,
        1,
    )


def test_the_vm_is_put_with_its_tags_and_owns_its_disk_and_nic(arm: Arm) -> None:
    request = _request(
        1,
        osDisk={"sizeGb": 8, "storageAccountType": "StandardSSD_LRS"},
        priority="Spot",
        zones=["2"],
        sshPublicKeys=["ssh-ed25519 AAAAC3Nza key"],
        userData="hello",
    )
    made = _provider(arm).create_instance(request)
    name = vm_name(request)
    assert made.name == name == f"c-web-00001-{name[-10:]}" and vm_name(request) == name
    vm = arm.fake.get(made.id)
    assert vm is not None and vm["tags"] == dict(request.tags) == dict(made.tags)
    props = vm["properties"]
    assert props["storageProfile"]["imageReference"] == {"id": IMAGE}
    assert props["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    assert props["storageProfile"]["osDisk"]["diskSizeGB"] == 8
    assert props["networkProfile"]["networkInterfaces"][0]["properties"]["deleteOption"] == "Delete"
    assert (
        props["priority"] == "Spot" and props["evictionPolicy"] == "Delete" and vm["zones"] == ["2"]
    )
    assert (
        props["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"]
        == "ssh-ed25519 AAAAC3Nza key"
    )
    # what the image's metadata component reads from IMDS: the machine's name and the group's data
    assert json.loads(base64.b64decode(props["userData"])) == {
        "hostname": {"content": "c-web-00001"},
        "userdata": {"content": "hello"},
    }
    nic = arm.fake.get(f"{arm.group_id()}/providers/Microsoft.Network/networkInterfaces/{name}-nic")
    assert nic is not None and nic["tags"] == dict(request.tags)
    assert nic["properties"]["ipConfigurations"][0]["properties"]["subnet"] == {"id": SUBNET}
    puts = [p for m, p in arm.fake.requests if m == "PUT"]
    assert [p.rsplit("/", 2)[1] for p in puts] == [
        "networkInterfaces",
        "virtualMachines",
    ]  # one of each


def test_destroy_leaves_no_vm_disk_or_nic_even_when_the_platform_would_keep_them(arm: Arm) -> None:
    provider = _provider(arm)
    made = [provider.create_instance(_request(n)) for n in range(1, 4)]
    arm.fake.poll_all()  # the platform finished making them: the OS disks exist
    assert len(arm.fake.of_type("Microsoft.Compute/disks")) == 3
    kept = arm.fake.get(made[0].id)
    assert kept is not None  # a VM made elsewhere (Cluster API did this) that detaches on delete
    kept["properties"]["storageProfile"]["osDisk"]["deleteOption"] = "Detach"
    kept["properties"]["networkProfile"]["networkInterfaces"][0]["properties"]["deleteOption"] = (
        "Detach"
    )
    for instance in made:
        provider.destroy_instance(instance.id, 1)
    for kind in ("virtualMachines", "disks", "networkInterfaces"):
        assert arm.fake.of_type(kind) == [], kind
    assert list_all(provider, {TAG_CLUSTER: "c"})[0] == []


def test_the_address_is_the_nics_private_ip(arm: Arm) -> None:
    provider = _provider(arm)
    made = provider.create_instance(_request(1))
    arm.fake.poll_all()
    address = provider.address(made, 7080)
    assert address is not None and address[0].startswith("10.0.0.") and address[1] == 7080
    nic = arm.fake.get(
        f"{arm.group_id()}/providers/Microsoft.Network/networkInterfaces/{made.name}-nic"
    )
    assert (
        nic is not None
        and address[0] == nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
    )


@pytest.mark.parametrize(("status", "code"), [(409, "QuotaExceeded"), (403, "AuthorizationFailed")])
def test_a_refusal_is_permanent_says_azures_message_and_takes_the_nic_back(
    arm: Arm, status: int, code: str
) -> None:
    arm.fake.fail("PUT", "virtualMachines", status, code)
    with pytest.raises(ProviderError) as caught:
        _provider(arm).create_instance(_request(1))
    assert type(caught.value) is ProviderError
    assert code in caught.value.message and caught.value.hint == "injected fault"
    assert arm.fake.of_type("networkInterfaces") == [] and arm.fake.of_type("virtualMachines") == []


def test_no_subnet_is_a_clear_error(arm: Arm) -> None:
    provider = AzureProvider("az", arm.clients(), GROUP, LOCATION, {})
    with pytest.raises(ProviderError, match="no subnet"):
        provider.create_instance(_request(1))


def test_the_token_never_reaches_a_log_or_a_message(
    arm: Arm, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "SECRET-MARKER-azure-7d3f"
    arm.fake.token = marker
    caplog.set_level(logging.DEBUG)
    provider = _provider(arm, marker)
    made = provider.create_instance(_request(1))
    list_all(provider, {TAG_CLUSTER: "c"})
    arm.fake.fail("DELETE", "virtualMachines", 401, "InvalidAuthenticationToken")
    with pytest.raises(ProviderError) as caught:
        provider.destroy_instance(made.id, 1)
    assert "Authorization" in caplog.text  # the HTTP log ran, headers and all ...
    assert marker not in caplog.text  # ... with the token redacted
    assert marker not in str(caught.value) and marker not in (caught.value.hint or "")
    assert marker not in repr(provider.arm.compute._config.credential)  # noqa: SLF001


def test_the_example_cluster_loads_and_bad_properties_are_located(tmp_path: Path) -> None:
    spec = load_cluster_spec(EXAMPLES / "azure-cluster.yml")
    assert (
        spec.providers["az"].type == "azure"
        and spec.groups[0].properties["vmSize"] == "Standard_B2s"
    )
    text = (EXAMPLES / "azure-cluster.yml").read_text()
    text = text.replace("      vmSize: Standard_B2s\n", "").replace(
        "priority: Regular", "priority: Cheap"
    )
    with pytest.raises(SpecError) as caught:
        parse_cluster_spec(text, "azure.yml")
    message = str(caught.value)
    assert (
        "missing required key 'vmSize'" in message
        and "priority: must be Regular or Spot" in message
    )
    assert "azure.yml:2" in message


@pytest.mark.parametrize("fault", [503, 429, "drop-nic"])
def test_a_failed_create_takes_its_nic_back_so_an_abandoned_slot_leaves_nothing(
    arm: Arm, fault: int | str
) -> None:
    if (
        fault == "drop-nic"
    ):  # the NIC was made, its answer lost: the create fails as outcome unknown
        arm.fake.fail("PUT", "networkInterfaces", "drop")
    else:
        arm.fake.fail("PUT", "virtualMachines", fault, retry_after=0 if fault == 429 else None)
    with pytest.raises(TransientProviderError):
        _provider(arm).create_instance(_request(1))
    assert arm.fake.of_type("networkInterfaces") == [] and arm.fake.of_type("virtualMachines") == []


def test_an_unanswered_vm_put_keeps_the_nic_and_the_retry_finds_the_vm(arm: Arm) -> None:
    provider = _provider(arm)
    arm.fake.fail("PUT", "virtualMachines", "drop")
    with pytest.raises(OutcomeUnknownError):
        provider.create_instance(_request(1))
    [vm] = arm.fake.of_type("virtualMachines")
    again = provider.create_instance(_request(1))
    assert again.id == vm["id"] and len(arm.fake.of_type("networkInterfaces")) == 1
