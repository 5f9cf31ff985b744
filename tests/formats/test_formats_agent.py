"""Every bootable format of one real image (kernel, init, dhcpcd, agent: the components
`provision pkg build` makes) boots under QEMU (TCG) through the launcher of `provision run
qemu` to the agent reporting every service running and the image digest of the build
manifest. One `provision build` writes all formats; BIOS formats boot on SeaBIOS, EFI ones on
OVMF; ISOs as CD-ROMs, disks as virtio disks, kernel+squashfs/erofs as the kernel with the
root image on a virtio disk and its loader initrd. Two VMs boot at a time (a thread pool in
the module fixture); each is stopped as soon as its agent has answered."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from formats_testkit import provision_cli, write_agent_spec

from provision.agent import AgentStatus, read_agent
from provision.builders.formats import boot_method
from provision.providers.qemu.state import pid_is_vm
from provision.providers.qemu.vm import PortMapping, VMConfig, start_vm, stop_vm

pytestmark = [
    pytest.mark.boot,
    pytest.mark.xdist_group("formats-agent"),
    pytest.mark.timeout(600),
]  # a cold component store: pkg build first

BOOTS = [
    "iso-bios",
    "iso-efi",
    "iso-efi-initrd",
    "raw-bios",
    "raw-efi",
    "qcow2-bios",
    "qcow2-efi",
    "vhd",
    "dynamic-vhd",
    "vmdk",
    "aws",
    "gcp",
    "kernel+squashfs",
    "kernel+erofs",
    "tar-kernel-initrd",
]
SERVICES = {"agent": "running", "dhcpcd": "running"}
MEM_MIB = {
    "bios": 160,
    "efi": 224,
}  # smallest that boot, measured: SeaBIOS 128, OVMF 208 (the UKI of iso-efi)
BOOT_TIMEOUT = 150.0


@dataclass(frozen=True)
class Built:
    out: Path
    digest: str
    files: dict[str, list[Path]]  # format -> its files (as the manifest lists them)
    seconds: float


@dataclass(frozen=True)
class Boot:
    fmt: str
    artifact: Path
    efi: bool  # OVMF on the QEMU command line
    seconds: float
    status: AgentStatus | None
    console: str


@pytest.fixture(scope="module")
def built(component_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("agent-formats")
    spec = write_agent_spec(work / "agent.yml")
    started = time.monotonic()
    done = provision_cli(
        "build", "-q", "-f", ",".join(BOOTS), "-o", str(work / "out"), str(spec), timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((work / "out" / "agent.manifest.json").read_text())
    files: dict[str, list[Path]] = {}
    for entry in manifest["outputs"]:
        files.setdefault(entry["format"], []).append(work / "out" / entry["file"])
    return Built(work / "out", manifest["image_digest"], files, time.monotonic() - started)


def artifact_of(fmt: str, build: Built, scratch: Path) -> Path:
    """What `provision run qemu` is given for ``fmt`` (the gcp tarball and the tar-kernel-initrd
    archive as they are: the launcher unpacks them)."""
    if fmt.startswith("kernel+"):  # the root image names the set (kernel, cmdline, loader)
        return build.out / f"agent-{fmt.removeprefix('kernel+')}.img"
    (image,) = build.files[fmt]
    return image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def boot_to_agent(fmt: str, build: Built, scratch: Path, state: Path) -> Boot:
    """Boot ``fmt`` until its agent reports every service running; stop it at once."""
    scratch.mkdir(parents=True)
    artifact = artifact_of(fmt, build, scratch)
    port = free_port()
    name = "fmt-" + fmt.replace("+", "-")
    config = VMConfig(
        name=name,
        artifact=artifact,
        accel="tcg",
        mem_mib=MEM_MIB[boot_method(fmt).firmware],
        publish=(PortMapping(port, 7080),),
    )
    started = time.monotonic()
    handle = start_vm(config, state_root=state, detach=True)
    status = None
    try:
        while (
            time.monotonic() - started < BOOT_TIMEOUT
            and handle.pid
            and pid_is_vm(handle.pid, handle.state_dir)
        ):
            status = read_agent("127.0.0.1", port, timeout=1.0)
            if status is not None and status.services == SERVICES:
                break
            time.sleep(0.3)
        seconds = time.monotonic() - started
        console = handle.serial_log.read_bytes().decode(errors="replace")
    finally:
        stop_vm(name, state, timeout=0.5)
    return Boot(fmt, artifact, any("OVMF" in arg for arg in handle.argv), seconds, status, console)


@pytest.fixture(scope="module")
def boots(built: Built, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Boot]:
    work = tmp_path_factory.mktemp("agent-boots")
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {
            fmt: pool.submit(
                boot_to_agent, fmt, built, work / fmt.replace("+", "-"), work / "state"
            )
            for fmt in BOOTS
        }
        results = {fmt: future.result() for fmt, future in futures.items()}
    wall = time.monotonic() - started
    print(
        f"\nbuild of {len(BOOTS)} formats: {built.seconds:.1f}s; boots to the agent, 2 at a time: {wall:.1f}s"
    )
    for boot in results.values():
        print(f"  {boot.fmt:<18}{'efi' if boot.efi else 'bios':<5}{boot.seconds:6.1f}s")
    return results


@pytest.mark.parametrize("fmt", BOOTS)
def test_format_boots_to_the_agent(fmt: str, built: Built, boots: dict[str, Boot]) -> None:
    boot = boots[fmt]
    assert boot.efi == (boot_method(fmt).firmware == "efi"), f"{fmt} booted on the wrong firmware"
    assert boot.status is not None, (
        f"{fmt}: the agent never answered; console:\n{boot.console[-3000:]}"
    )
    assert boot.status.services == SERVICES, (
        f"{fmt}: {boot.status}; console:\n{boot.console[-3000:]}"
    )
    assert boot.status.digest == built.digest
