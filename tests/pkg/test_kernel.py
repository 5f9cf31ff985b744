"""The kernel component: pkg/kernel locked against the host's apt (so the test follows
security updates) and built: `kernel` is a bzImage, `kernel.tar` holds the requested modules,
their dependencies and the depmod indexes."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
from pkg_testkit import REPO, locked

from provision.builders.pkg import Apt, build_recipe, check_lock, load_recipe, read_lock
from provision.builders.pkg.kernel import module_name, read_modinfo
from provision.oci.store import ImageStore

VM_MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
              "virtio_pci", "failover", "net_failover", "virtio_net", "virtio_blk", "isofs",
              "overlay", "vfat"]  # fmt: skip


@pytest.mark.parametrize("name", ["kernel", "kernel-generic"])
def test_committed_kernel_locks_match_their_recipes(name: str) -> None:
    recipe = load_recipe(REPO / "pkg" / name)
    lock = read_lock(recipe.lock_file)
    check_lock(recipe, lock)
    (resolution,) = lock.resolved
    assert resolution.name == recipe.kernel.package  # type: ignore[union-attr]
    assert resolution.package.startswith("linux-image-6.")


@pytest.fixture(scope="module")
def kernel_image(
    tmp_path_factory: pytest.TempPathFactory, deb_cache: Path, host_apt: Apt
) -> tuple[tarfile.TarFile, dict[str, bytes], str]:
    base = tmp_path_factory.mktemp("kernel")
    shutil.copytree(REPO / "pkg" / "kernel", base / "kernel")
    (base / "kernel" / "lock.yml").unlink()
    recipe = locked(base / "kernel", host_apt)
    store = ImageStore(base / "store")
    result = build_recipe(recipe, store, host_apt, deb_cache)
    image = store.resolve(result.name)
    with store.open_layer(image.layers[0]) as handle, tarfile.open(fileobj=handle) as outer:
        files = {m.name: outer.extractfile(m).read() for m in outer if m.isreg()}  # type: ignore[union-attr]
    assert result.kernel is not None
    return tarfile.open(fileobj=io.BytesIO(files["kernel.tar"])), files, result.kernel.version


def test_kernel_image_layout(kernel_image: tuple[tarfile.TarFile, dict[str, bytes], str]) -> None:
    modules, files, version = kernel_image
    assert sorted(files) == ["kernel", "kernel.tar"]
    kernel = files["kernel"]
    assert kernel[0x202:0x206] == b"HdrS"  # a bzImage the boot loaders and QEMU take
    assert version.endswith("-cloud-amd64")
    names = modules.getnames()
    prefix = f"lib/modules/{version}/"
    assert all(n.startswith("lib") for n in names)
    for index in ("modules.dep", "modules.dep.bin", "modules.alias", "modules.order",
                  "modules.builtin", "modules.symbols"):  # fmt: skip
        assert prefix + index in names, index
    shipped = {module_name(n) for n in names if n.endswith(".ko")}
    assert set(VM_MODULES) <= shipped
    dep = modules.extractfile(prefix + "modules.dep").read().decode()  # type: ignore[union-attr]
    lines = {line.split(":")[0]: line.split(":")[1].split() for line in dep.splitlines()}
    virtio_net = lines["kernel/drivers/net/virtio_net.ko"]
    assert {module_name(d) for d in virtio_net} == {"net_failover", "failover", "virtio",
                                                      "virtio_ring"}  # fmt: skip
    # every dependency depmod found is shipped
    for deps in lines.values():
        assert all(prefix + d in names for d in deps)
    order = modules.extractfile(prefix + "modules.order").read().decode().split()  # type: ignore[union-attr]
    assert sorted(order) == sorted(n[len(prefix) :] for n in names if n.endswith(".ko"))
    assert all(m.mtime == 0 and m.uid == 0 for m in modules.getmembers())


@pytest.mark.parametrize("suffix", [".ko", ".ko.xz", ".ko.zst", ".ko.gz"])
def test_modinfo_of_a_compressed_module_through_the_codec_table(suffix: str) -> None:
    from provision.compress import codec_for_file_name
    from provision.errors import ProvisionError

    host = next(Path("/lib/modules").glob("*/kernel/drivers/block/virtio_blk.ko"))
    path = "kernel/drivers/block/virtio_blk" + suffix
    data = codec_for_file_name(path).compress(host.read_bytes())
    assert module_name(path) == "virtio_blk"
    info = read_modinfo(path, data)
    assert info["name"] == ["virtio_blk"] and "virtio_ring" in info["depends"][0]
    if suffix != ".ko":
        with pytest.raises(ProvisionError, match=f"{path}: not a readable kernel module"):
            read_modinfo(path, data[: len(data) // 2])
