"""The reconcile engine on the azure provider while a fifth of ARM's writes and listings fail at
random (429, 503, or the work done and the answer lost): a scale-up, a scale-down and a scale to
zero end with zero duplicate slots, zero untagged VMs and zero orphaned disks or NICs."""

from __future__ import annotations

from pathlib import Path

from arm_testkit import GROUP, LOCATION, SUBSCRIPTION, Arm

from provision.clock import FakeClock
from provision.providers.azure.clients import StaticTokenCredential
from provision.providers.azure.target import create_azure_provider
from provision.reconcile.engine import Engine
from provision.reconcile.journal import SqliteStore
from provision.reconcile.provider import TAG_CLUSTER, TAG_GROUP, TAG_SLOT
from provision.reconcile.spec import parse_cluster_spec

IMAGE = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/images/web"
)
SUBNET = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Network/virtualNetworks/v/subnets/s"


def _spec(url: str, size: int) -> str:
    return f"""
cluster: chaos
providers:
  az:
    type: azure
    options: {{subscriptionId: {SUBSCRIPTION}, resourceGroup: {GROUP}, location: {LOCATION},
              subnetId: "{SUBNET}", endpoint: "{url}"}}
groups:
  - name: web
    provider: az
    image: "{IMAGE}"
    size: {size}
    properties: {{vmSize: Standard_B2s}}
    update: {{maxSurge: 2, maxUnavailable: 1}}
"""


def _check(arm: Arm, size: int) -> None:
    arm.fake.poll_all()
    vms = arm.fake.of_type("Microsoft.Compute/virtualMachines")
    assert len(vms) == size
    slots = [vm["tags"].get(TAG_SLOT) for vm in vms]
    assert len(set(slots)) == len(slots), f"duplicate slots {slots}"
    assert all(
        vm["tags"].get(TAG_CLUSTER) == "chaos" and vm["tags"].get(TAG_GROUP) == "web" for vm in vms
    )
    owned = {vm["name"] for vm in vms}
    nics = {
        nic["name"].removesuffix("-nic")
        for nic in arm.fake.of_type("Microsoft.Network/networkInterfaces")
    }
    disks = {d["name"].removesuffix("-osdisk") for d in arm.fake.of_type("Microsoft.Compute/disks")}
    assert nics == owned, f"orphaned NICs {nics - owned}"
    assert disks == owned, f"orphaned disks {disks - owned}"


def test_chaos_leaves_no_duplicates_untagged_vms_or_orphans(arm: Arm, tmp_path: Path) -> None:
    arm.fake.page_size = 3
    arm.fake.chaos = 0.2
    clock = FakeClock()
    store = SqliteStore(tmp_path / "journal.db")
    try:
        for size in (6, 2, 0):
            spec = parse_cluster_spec(_spec(arm.url, size), "chaos.yml")
            provider = create_azure_provider(
                spec.providers["az"], StaticTokenCredential(arm.fake.token)
            )
            engine = Engine(spec, {"az": provider}, store, clock, allow_destroy_all=True)
            engine.acquire()
            engine.converge(max_passes=200, between=lambda _n: clock.advance(5))
            arm.fake.chaos = 0.0  # the check reads the truth, not through faults
            _check(arm, size)
            arm.fake.chaos = 0.2
        assert arm.fake.chaos_faults >= 10  # the engine did its work through the faults
    finally:
        store.close()
