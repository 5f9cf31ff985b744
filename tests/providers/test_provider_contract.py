"""The contract every provider passes, whatever its target: idempotent create by key, tags at
birth and listable, paging until ``next_token is None``, idempotent destroy, and the error
classes that decide the engine's retries. Each target adds a subject below (made through its
registered target, with real parts: the simulated cloud in the process and over HTTP, real
QEMU VMs booting a tiny guest, lab machines powered through a Redfish service over QEMU, the real azure-mgmt clients against
a wire-level fake of Azure Resource Manager, the real google-cloud-compute client against a
wire-level Compute Engine fake); a later target adds itself to SUBJECTS and, where it speaks a
protocol that can fail that way, to FAULTY."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aws.aws_testkit import REGION
from aws.ec2_standin import Ec2Moto, serve_ec2_moto
from cluster_e2e.standin import write_standin

from provision.clock import SystemClock
from provision.providers import get_target
from provision.providers.qemu.state import list_vms
from provision.providers.qemu.vm import stop_vm
from provision.providers.simulated.cloud import SimulatedCloud
from provision.providers.simulated.server import serve_simulated_cloud
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_EPOCH,
    TAG_GROUP,
    TAG_SLOT,
    CreateRequest,
    Instance,
    InstanceState,
    OutcomeUnknownError,
    Provider,
    RateLimitedError,
    StaleEpochError,
    TransientProviderError,
    list_all,
)
from provision.reconcile.spec import ProviderSpec

PAGE = 2  # every subject lists in pages of two


@dataclass
class Subject:
    """A provider under contract, the image id it launches, and its hands for faults."""

    provider: Provider
    image: str
    cloud: SimulatedCloud | None = None  # where faults are injected (simulated targets)
    fences: bool = False  # refuses calls with a stale epoch (else records the epoch tag)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    injector: Callable[[str], None] | None = None  # where faults are injected (other targets)
    properties: dict[str, object] = field(default_factory=dict)  # a group's properties

    def inject(self, error: str) -> None:
        if self.injector is not None:
            self.injector(error)
            return
        assert self.cloud is not None
        self.cloud.faults.next_error = error


def _simulated(tmp_path: Path) -> Subject:
    target = get_target("simulated")
    provider = target.create_provider(
        ProviderSpec("sim", "simulated", options={"pageSize": PAGE}, base=tmp_path), SystemClock()
    )
    return Subject(provider, "img-contract", cloud=provider.cloud, fences=True)  # type: ignore[attr-defined]


def _simulated_http(tmp_path: Path) -> Subject:
    cloud = SimulatedCloud(page_size=PAGE)
    server = serve_simulated_cloud(cloud)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    provider = get_target("simulated-http").create_provider(
        ProviderSpec("simh", "simulated-http", options={"url": url}, base=tmp_path), SystemClock()
    )
    return Subject(provider, "img-contract", cloud=cloud, fences=True, cleanup=[server.shutdown])


def _qemu(tmp_path: Path) -> Subject:
    root = tmp_path / "state"
    target = get_target("qemu")
    options = {"stateRoot": str(root), "pageSize": PAGE, "stopTimeout": "2s", "accel": "tcg"}
    provider = target.create_provider(
        ProviderSpec("local", "qemu", options=options, base=tmp_path), SystemClock()
    )
    image = target.resolve_image(provider, str(write_standin(tmp_path / "art", "contract")))

    def stop_all() -> None:
        for vm in list_vms(root):
            stop_vm(vm.name, root, timeout=0)
        shutil.rmtree(root, ignore_errors=True)

    return Subject(provider, image, cleanup=[stop_all])


def _metal(tmp_path: Path) -> Subject:
    from metal.metal_testkit import PASSWORD, RedfishLab, VirtualMachine, lab_file_text

    machines = [
        VirtualMachine(
            f"node-{n}",
            f"52:54:00:c0:00:0{n}",
            tmp_path / f"node-{n}",
            "http://10.0.2.2:9/boot.ipxe",
            mem_mib=128,
        )
        for n in range(1, 4)
    ]
    redfish = RedfishLab(machines)
    (tmp_path / "bmc.pass").write_text(PASSWORD)
    (tmp_path / "lab.yml").write_text(lab_file_text(machines, redfish, tmp_path / "bmc.pass"))
    # firmware that never boots an OS ignores the power button: forced off after 1 s
    options = {
        "lab": "lab.yml",
        "state": "metal-state",
        "pageSize": PAGE,
        "powerTimeout": "20s",
        "shutdownTimeout": "1s",
    }
    provider = get_target("metal").create_provider(
        ProviderSpec("lab", "metal", options=options, base=tmp_path), SystemClock()
    )
    return Subject(provider, "sha256:" + "0" * 64, cleanup=[redfish.close])


_MOTO: list[Ec2Moto] = []  # one moto (behind the EC2 layer) for the session, started on first use
_AWS_FAULTS = {"503": "503", "429": "throttle", "timeout": "slow"}


def _aws(tmp_path: Path) -> Subject:
    if not _MOTO:
        _MOTO.append(serve_ec2_moto()[0])  # a daemon thread: it ends with the test process
    moto = _MOTO[0]
    moto.reset()
    saved = {k: os.environ.get(k) for k in moto.env()}
    os.environ.update(moto.env())  # credentials the SDK's way; restored by the cleanup

    def restore() -> None:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    # pageSize 2 is below what EC2 takes (5) and what the spec schema lets through: moto pages in twos
    options = {"region": REGION, "endpoint": moto.url, "pageSize": PAGE, "readTimeout": "2s"}
    provider = get_target("aws").create_provider(
        ProviderSpec("cloud", "aws", options=options, base=tmp_path), SystemClock()
    )
    return Subject(
        provider,
        moto.image(),
        cleanup=[restore],
        properties={"instanceType": "t3.micro"},
        injector=lambda fault: moto.layer.inject("*", _AWS_FAULTS[fault]),
    )


def _azure(tmp_path: Path) -> Subject:
    """The real azure-mgmt clients against the wire-level fake ARM server (tests/azure_cloud)."""
    from azure_cloud.arm_testkit import GROUP, LOCATION, SUBSCRIPTION
    from azure_cloud.fake_arm import FakeArm, serve_fake_arm

    arm = FakeArm(polls=1, page_size=PAGE, token="contract-token")
    server, url = serve_fake_arm(arm)
    before = os.environ.get("PROVISION_AZURE_TOKEN")
    os.environ["PROVISION_AZURE_TOKEN"] = arm.token  # the way a user hands provision a bearer token
    subnet = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default"
    options = {
        "subscriptionId": SUBSCRIPTION,
        "resourceGroup": GROUP,
        "location": LOCATION,
        "subnetId": subnet,
        "endpoint": url,
    }
    provider = get_target("azure").create_provider(
        ProviderSpec("az", "azure", options=options, base=tmp_path), SystemClock()
    )

    def stop() -> None:
        server.shutdown()
        server.server_close()
        if before is None:
            os.environ.pop("PROVISION_AZURE_TOKEN", None)
        else:
            os.environ["PROVISION_AZURE_TOKEN"] = before

    def inject(fault: str) -> None:
        arm.fail_next_vm_call("drop" if fault == "timeout" else int(fault))

    image = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/images/contract"
    return Subject(
        provider, image, cleanup=[stop], injector=inject, properties={"vmSize": "Standard_B2s"}
    )


def _gcp(tmp_path: Path) -> Subject:
    from gcp.gce_fake import serve_fake_gce

    stack = ExitStack()
    fake = stack.enter_context(serve_fake_gce(slow=2.0))
    options = {
        "project": "provision-test",
        "zone": "us-central1-a",
        "endpoint": fake.url,
        "anonymous": True,
        "pageSize": PAGE,
        "requestTimeout": "1s",
        "operationTimeout": "20s",
    }
    provider = get_target("gcp").create_provider(
        ProviderSpec("gce", "gcp", options=options, base=tmp_path), SystemClock()
    )

    def inject(fault: str) -> None:
        fake.next_fault = fault

    return Subject(
        provider,
        "projects/provision-test/global/images/contract-0123456789ab",
        cleanup=[stack.close],
        properties={"machineType": "e2-small"},
        injector=inject,
    )


SUBJECTS: dict[str, Callable[[Path], Subject]] = {
    "simulated": _simulated,
    "simulated-http": _simulated_http,
    "qemu": _qemu,
    "metal": _metal,
    "aws": _aws,
    "azure": _azure,
    "gcp": _gcp,
}
# Targets whose calls can fail with 429 / 503 / a time-out (FAULTY), and that fence epochs (fences).
FAULTY = ("simulated", "simulated-http", "aws", "azure", "gcp")


def _marks(name: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.boot, pytest.mark.timeout(300)] if name in ("qemu", "metal") else []


@pytest.fixture(params=[pytest.param(n, marks=_marks(n)) for n in SUBJECTS])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    made = SUBJECTS[request.param](tmp_path)
    try:
        yield made
    finally:
        for step in made.cleanup:
            step()


@pytest.fixture(params=FAULTY)
def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    made = SUBJECTS[request.param](tmp_path)
    try:
        yield made
    finally:
        for step in made.cleanup:
            step()


def _tags(slot: str, cluster: str = "contract", epoch: int = 1) -> dict[str, str]:
    return {TAG_CLUSTER: cluster, TAG_GROUP: "web", TAG_SLOT: slot, TAG_EPOCH: str(epoch)}


def _request(
    subject: Subject,
    slot: str,
    *,
    cluster: str = "contract",
    epoch: int = 1,
    key: str | None = None,
) -> CreateRequest:
    return CreateRequest(
        key or f"{cluster}/web/{slot}/1",
        f"{cluster}-web-{slot}",
        subject.image,
        subject.properties,
        _tags(slot, cluster, epoch),
        epoch,
    )


def _listed(subject: Subject, tags: dict[str, str]) -> list[Instance]:
    return [
        i for i in list_all(subject.provider, tags)[0] if i.state is not InstanceState.TERMINATED
    ]


def test_create_twice_with_one_key_makes_one_machine(subject: Subject) -> None:
    first = subject.provider.create_instance(_request(subject, "00001"))
    again = subject.provider.create_instance(_request(subject, "00001"))
    assert again.id == first.id
    listed = _listed(subject, {TAG_CLUSTER: "contract"})
    assert [i.id for i in listed] == [first.id]


def test_tags_are_there_at_birth_and_select_the_listing(subject: Subject) -> None:
    made = subject.provider.create_instance(_request(subject, "00001"))
    assert _tags("00001").items() <= made.tags.items()  # the create's own answer carries them
    other = subject.provider.create_instance(_request(subject, "00001", cluster="elsewhere"))
    assert other.id != made.id
    mine = _listed(subject, {TAG_CLUSTER: "contract", TAG_GROUP: "web"})
    assert [i.id for i in mine] == [made.id]
    assert _tags("00001").items() <= mine[0].tags.items()
    assert mine[0].image == subject.image
    assert [i.id for i in _listed(subject, {TAG_CLUSTER: "elsewhere"})] == [other.id]
    assert _listed(subject, {TAG_CLUSTER: "nobody"}) == []


def test_listing_follows_pages_until_next_token_is_none(subject: Subject) -> None:
    made = {subject.provider.create_instance(_request(subject, f"{n:05d}")).id for n in range(1, 4)}
    tags = {TAG_CLUSTER: "contract"}
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = subject.provider.list_instances(tags, token)
        pages += 1
        assert len(page.instances) <= PAGE
        seen += [i.id for i in page.instances]
        token = page.next_token
        if token is None:
            break
        assert pages < 10, "the listing never ended"
    assert sorted(seen) == sorted(made) and len(seen) == 3
    assert pages == 2  # three machines in pages of two


def test_destroy_is_idempotent_and_a_gone_machine_is_fine(subject: Subject) -> None:
    made = subject.provider.create_instance(_request(subject, "00001"))
    subject.provider.destroy_instance(made.id, 1)
    subject.provider.destroy_instance(made.id, 1)
    assert _listed(subject, {TAG_CLUSTER: "contract"}) == []
    subject.provider.destroy_instance("never-existed-0001", 1)


def test_a_stale_epoch_is_refused_or_recorded(subject: Subject) -> None:
    fresh = subject.provider.create_instance(_request(subject, "00001", epoch=5))
    stale = _request(subject, "00002", epoch=3)
    if subject.fences:
        with pytest.raises(StaleEpochError):
            subject.provider.create_instance(stale)
        with pytest.raises(StaleEpochError):
            subject.provider.destroy_instance(fresh.id, 3)
    else:  # the journal's guard fences; the machine shows which epoch made it
        made = subject.provider.create_instance(stale)
        assert made.tags[TAG_EPOCH] == "3" and fresh.tags[TAG_EPOCH] == "5"


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("503", TransientProviderError),
        ("429", RateLimitedError),
        ("timeout", OutcomeUnknownError),
    ],
)
def test_failures_map_to_the_error_class_that_decides_the_retry(
    faulty: Subject, fault: str, error: type[Exception]
) -> None:
    faulty.inject(fault)
    with pytest.raises(error) as caught:
        faulty.provider.create_instance(_request(faulty, "00001"))
    assert type(caught.value) is error  # exactly: a 429 is not a plain transient error
    if fault == "timeout":  # it took effect: the retry with the same key finds it
        again = faulty.provider.create_instance(_request(faulty, "00001"))
        assert [i.id for i in _listed(faulty, {TAG_CLUSTER: "contract"})] == [again.id]
    else:  # nothing happened: the retry makes the machine
        assert _listed(faulty, {TAG_CLUSTER: "contract"}) == []
        faulty.provider.create_instance(_request(faulty, "00001"))
    for op in ("list", "destroy"):
        faulty.inject(fault)
        with pytest.raises(TransientProviderError):
            if op == "list":
                faulty.provider.list_instances({TAG_CLUSTER: "contract"})
            else:
                faulty.provider.destroy_instance("i-00000001", 1)
