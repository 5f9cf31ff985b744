"""The engine tells a provider that keeps data for a group's next machine (ReplacingProvider:
metal's local disks) which destroys make room for a replacement: a rolling update's and a
remediation's, while the group still wants machines. A scale-down and a teardown (the group
at size 0) are plain destroys, which such a provider may wipe."""

from __future__ import annotations

from pathlib import Path

from reconcile_world import World, make_spec

from provision.providers.simulated.cloud import SimulatedCloud, SimulatedProvider
from provision.reconcile.engine import Engine
from provision.reconcile.provider import ReplacingProvider
from provision.reconcile.teardown import scaled_to_zero


class RecordingProvider(SimulatedProvider):
    """The simulated provider, noting how each machine was destroyed."""

    def __init__(self, cloud: SimulatedCloud, name: str) -> None:
        super().__init__(cloud, name)
        self.destroys: list[tuple[str, str]] = []  # (how, instance id)

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        self.destroys.append(("destroyed", instance_id))
        super().destroy_instance(instance_id, epoch)

    def destroy_for_replacement(self, instance_id: str, epoch: int) -> None:
        self.destroys.append(("replaced", instance_id))
        super().destroy_instance(instance_id, epoch)


def test_replacements_and_removals_are_told_apart(tmp_path: Path) -> None:
    world = World(tmp_path)
    provider = RecordingProvider(world.cloud, "sim")
    assert isinstance(provider, ReplacingProvider)

    def engine(spec_size: int, image: str, down: bool = False) -> Engine:
        spec = make_spec(spec_size, image, surge=0, unavailable=1)
        built = Engine(
            scaled_to_zero(spec) if down else spec,
            {"sim": provider},
            world.store(),
            world.clock,
            owner="engine",
            allow_destroy_all=down,
        )
        world.clock.advance(20)
        built.acquire()
        return built

    engine(3, "img-1").converge(between=world.step(3))
    assert provider.destroys == []
    engine(3, "img-2").converge(between=world.step(3))  # a rolling update: 3 re-images
    assert [how for how, _ in provider.destroys] == ["replaced"] * 3
    provider.destroys.clear()
    engine(2, "img-2").converge(between=world.step(3))  # a scale-down
    assert [how for how, _ in provider.destroys] == ["destroyed"]
    provider.destroys.clear()
    # provision down with an edited image: the machines are out of date, and not replaced
    engine(2, "img-3", down=True).converge(between=world.step(3))
    assert [how for how, _ in provider.destroys] == ["destroyed"] * 2
    assert world.owned() == []
    world.close()
