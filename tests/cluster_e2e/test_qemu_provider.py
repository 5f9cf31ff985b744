"""The qemu provider without booting: a fake launcher is injected (the real one is exercised by
test_cluster_boot.py), the image cache and the engine run for real."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from provision.clock import FakeClock
from provision.errors import UsageError
from provision.image_digest import ComponentsMissingError
from provision.providers.qemu.images import image_cache, import_artifact, resolve_cached_image
from provision.providers.qemu.provider import QemuProvider, vm_name_for
from provision.providers.qemu.state import VMInfo
from provision.providers.qemu.vm import VMConfig
from provision.reconcile.engine import Engine
from provision.reconcile.image import GroupImages
from provision.reconcile.journal import SqliteStore
from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_GROUP,
    CountingProvider,
    CreateRequest,
    InstanceState,
    ProviderError,
    list_all,
)
from provision.reconcile.registry import create_providers
from provision.reconcile.spec import parse_cluster_spec

REPO = Path(__file__).resolve().parents[2]
TAGS = {TAG_CLUSTER: "c1", TAG_GROUP: "web"}


class FakeLauncher:
    """VMs in a dict; ``start`` records each config it was given. ``busy`` host ports make the
    next starts fail like a taken --publish port does."""

    def __init__(self) -> None:
        self.vms: dict[str, VMInfo] = {}
        self.started: list[VMConfig] = []
        self.busy: set[int] = set()

    def start(self, config: VMConfig, state_root: Path) -> None:
        self.started.append(config)
        for port in config.publish:
            if port.host in self.busy:
                raise UsageError(f"cannot publish {port}: 127.0.0.1:{port.host}/tcp is in use")
        self.vms[config.name] = VMInfo(
            name=config.name,
            pid=1000 + len(self.started),
            state="running",
            tags=dict(config.tags),
            published=config.publish,
            started_at="",
            serial_log=state_root / "serial.log",
            state_dir=state_root / "vms" / config.name,
            accel=config.accel,
            artifact=str(config.artifact),
            detached=True,
        )

    def read(self, state_root: Path, name: str) -> VMInfo | None:
        return self.vms.get(name)

    def list(self, state_root: Path) -> list[VMInfo]:
        return sorted(self.vms.values(), key=lambda vm: vm.name)

    def stop(self, state_root: Path, name: str, timeout: float) -> None:
        self.vms.pop(name, None)


class Ports:
    def __init__(self, start: int = 40000) -> None:
        self.next = start

    def __call__(self, proto: str) -> int:
        self.next += 1
        return self.next


@pytest.fixture
def cached_image(tmp_path: Path) -> tuple[Path, str]:
    """A state root whose image cache holds a (fake, never booted) kernel+initrd artifact."""
    artifact = tmp_path / "art"
    artifact.mkdir()
    (artifact / "tiny-kernel").write_bytes(b"kernel")
    (artifact / "tiny-initrd.img").write_bytes(b"initrd")
    (artifact / "tiny-cmdline").write_text("quiet\n")
    root = tmp_path / "state"
    return root, import_artifact(artifact / "tiny", image_cache(root))


def _provider(root: Path, launcher: FakeLauncher, **kw: object) -> QemuProvider:
    return QemuProvider(root, FakeClock(), launcher=launcher, port_picker=Ports(), **kw)  # type: ignore[arg-type]


def _request(key: str, image: str, **props: object) -> CreateRequest:
    slot = key.split("/")[2]
    return CreateRequest(key, f"c1-web-{slot}", image, props, {**TAGS, "provision-slot": slot}, 1)


def test_create_twice_with_one_key_starts_one_vm(cached_image: tuple[Path, str]) -> None:
    root, digest = cached_image
    launcher = FakeLauncher()
    provider = _provider(root, launcher)
    first = provider.create_instance(_request("c1/web/00001/1", digest))
    again = provider.create_instance(_request("c1/web/00001/1", digest))
    assert again.id == first.id
    assert len(launcher.started) == 1
    assert [i.id for i in list_all(provider, TAGS)[0]] == [first.id]
    # the tags were handed to the launcher with the VM's config: on disk before QEMU starts
    assert {**TAGS, "provision-slot": "00001"}.items() <= launcher.started[0].tags.items()
    assert first.tags == {**TAGS, "provision-slot": "00001"}
    assert first.image == digest and first.state is InstanceState.RUNNING
    other = provider.create_instance(_request("c1/web/00002/2", digest))
    assert other.id != first.id and len(launcher.started) == 2


def test_a_dead_vm_is_started_again_under_the_same_name(cached_image: tuple[Path, str]) -> None:
    root, digest = cached_image
    launcher = FakeLauncher()
    provider = _provider(root, launcher)
    first = provider.create_instance(_request("c1/web/00001/1", digest))
    launcher.vms[first.id] = dataclasses.replace(launcher.vms[first.id], state="stopped", pid=None)
    assert list_all(provider, TAGS)[0][0].state is InstanceState.TERMINATED
    again = provider.create_instance(_request("c1/web/00001/1", digest))
    assert again.id == first.id and again.state is InstanceState.RUNNING
    assert len(launcher.started) == 2


def test_vm_names_are_readable_and_unique_per_key() -> None:
    a = vm_name_for("c1/web/00001/1", "c1-web-00001")
    assert a.startswith("c1-web-00001-")
    assert a != vm_name_for("c1/web/00001/2", "c1-web-00001")
    assert a == vm_name_for("c1/web/00001/1", "c1-web-00001")
    assert len(vm_name_for("k", "x" * 200)) <= 63


def test_agent_and_declared_ports_get_their_own_host_ports(cached_image: tuple[Path, str]) -> None:
    root, digest = cached_image
    provider = _provider(root, FakeLauncher())
    one = provider.create_instance(_request("c1/web/00001/1", digest, ports=[80, "53/udp"]))
    two = provider.create_instance(_request("c1/web/00002/2", digest, ports=[80]))
    agent_one, agent_two = provider.address(one, 7080), provider.address(two, 7080)
    web_one = provider.address(one, 80)
    assert agent_one and agent_two and web_one
    assert agent_one[0] == "127.0.0.1" and len({agent_one[1], agent_two[1], web_one[1]}) == 3
    assert provider.address(one, 22) is None
    assert provider.address(one, 53) is None  # udp only: not an address for an HTTP probe


def test_a_taken_port_is_chosen_again(cached_image: tuple[Path, str]) -> None:
    root, digest = cached_image
    launcher = FakeLauncher()
    launcher.busy = {40001}  # the first port the picker hands out
    provider = _provider(root, launcher)
    instance = provider.create_instance(_request("c1/web/00001/1", digest))
    assert provider.address(instance, 7080) == ("127.0.0.1", 40002)


def test_list_is_paged_and_filtered_by_tags(cached_image: tuple[Path, str]) -> None:
    root, digest = cached_image
    launcher = FakeLauncher()
    provider = _provider(root, launcher, page_size=2)
    made = {
        provider.create_instance(_request(f"c1/web/{n:05d}/{n}", digest)).id for n in range(1, 6)
    }
    foreign = CreateRequest(
        "c2/web/00001/1", "c2-web-00001", digest, {}, {TAG_CLUSTER: "c2", TAG_GROUP: "web"}, 1
    )
    provider.create_instance(foreign)
    found, pages = list_all(provider, TAGS)
    assert {i.id for i in found} == made and len(found) == 5 and pages == 3
    assert len(list_all(provider, {TAG_CLUSTER: "c2"})[0]) == 1


def test_destroy_is_idempotent_and_spares_vms_of_no_cluster(cached_image: tuple[Path, str]) -> None:
    root, digest = cached_image
    launcher = FakeLauncher()
    provider = _provider(root, launcher)
    instance = provider.create_instance(_request("c1/web/00001/1", digest))
    provider.destroy_instance(instance.id, 1)
    provider.destroy_instance(instance.id, 1)
    assert launcher.vms == {}
    launcher.start(VMConfig(name="mine", artifact=root, tags={"owner": "me"}), root)
    with pytest.raises(ProviderError, match="belongs to no cluster"):
        provider.destroy_instance("mine", 2)
    assert "mine" in launcher.vms


def test_bad_properties_are_refused_all_at_once(cached_image: tuple[Path, str]) -> None:
    root, digest = cached_image
    launcher = FakeLauncher()
    provider = _provider(root, launcher)
    with pytest.raises(ProviderError) as caught:
        provider.create_instance(
            _request("c1/web/00001/1", digest, accel="xen", mem="lots", memory=1)
        )
    message = caught.value.message
    assert "accel: must be tcg, kvm or auto" in message and "mem: must be MiB" in message
    assert "memory: unknown key" in message
    assert launcher.started == []


def test_image_cache_keys_artifacts_by_what_boots(
    tmp_path: Path, cached_image: tuple[Path, str]
) -> None:
    root, digest = cached_image
    art = tmp_path / "art"
    assert import_artifact(art / "tiny", image_cache(root)) == digest  # cached: same digest
    assert len([p for p in image_cache(root).iterdir() if not p.name.startswith(".")]) == 1
    booted = resolve_cached_image(root, digest)
    assert booted.parent.name == digest.removeprefix("sha256:")
    assert (booted.parent / "tiny-initrd.img").read_bytes() == b"initrd"
    (art / "tiny-cmdline").write_text("quiet variant=2\n")
    changed = import_artifact(art / "tiny", image_cache(root))
    assert changed != digest
    assert (
        resolve_cached_image(root, changed).parent / "tiny-cmdline"
    ).read_text() == "quiet variant=2\n"
    with pytest.raises(ProviderError, match="not in the qemu image cache"):
        resolve_cached_image(root, "sha256:" + "0" * 64)


def test_an_image_spec_with_unbuilt_components_says_how_to_build_them(tmp_path: Path) -> None:
    from provision.oci.store import ImageStore

    spec = parse_cluster_spec(
        "cluster: c1\ngroups:\n- {name: web, provider: qemu, image: web.yml, size: 1}\n",
        str(REPO / "examples/x.yml"),
    )
    group = spec.groups[0]
    providers = create_providers(spec, FakeClock())
    images = GroupImages(
        spec, providers, build=False, store=ImageStore(tmp_path / "oci"), artifacts=tmp_path / "art"
    )
    with pytest.raises(ComponentsMissingError) as caught:
        images.image(group)
    assert (
        "provision/kernel:" in caught.value.message and "provision/agent:" in caught.value.message
    )
    assert caught.value.hint == "build them first: provision pkg build --all"


def test_engine_converges_on_the_qemu_provider_then_makes_no_call(
    tmp_path: Path, cached_image: tuple[Path, str]
) -> None:
    root, digest = cached_image
    text = (
        "cluster: c1\nproviders:\n  local: {type: qemu, options: {stateRoot: state, accel: tcg}}\n"
        f"groups:\n- {{name: web, provider: local, image: '{digest}', size: 2, properties: {{mem: 256M}}}}\n"
    )
    spec = parse_cluster_spec(text, str(tmp_path / "cluster.yml"))
    clock = FakeClock()
    registered = create_providers(spec, clock)["local"]
    assert isinstance(registered, QemuProvider) and registered.state_root == root.resolve()
    launcher = FakeLauncher()
    counting = CountingProvider(QemuProvider(root, clock, launcher=launcher, port_picker=Ports()))
    store = SqliteStore(tmp_path / "journal.db")
    try:
        engine = Engine(spec, {"local": counting}, store, clock)
        engine.acquire()
        engine.converge(max_passes=5)
        assert len(launcher.vms) == 2
        assert all(c.mem_mib == 256 and c.accel == "tcg" for c in launcher.started)
        before = counting.counter.mutating
        engine.converge(max_passes=5)
        assert counting.counter.mutating == before
        assert not engine.plan().has_changes
    finally:
        store.close()
