"""Tiny boot inputs for the format tests: the host's Debian cloud kernel and a busybox-static
initrd whose /init prints a marker and the kernel command line, then powers off. With
``provision.rootfs=squashfs|erofs`` on the command line it first mounts /dev/nvme0n1 with that
filesystem and prints the marker file it finds there."""

from __future__ import annotations

import fcntl
import glob
import gzip
import io
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cli_testkit import run_provision
from guest_testkit import newc_archive

from provision.builders.base import BootInputs, FormatOptions
from provision.builders.formats import FORMATS, boot_method

MARKER = "PROVISION-BOOT-OK"
ROOTFS_MARKER = "ROOTFS-MARKER-7d41"
EPOCH = 1700000000
DIGEST = "sha256:" + "ab" * 32
CMDLINE = "console=ttyS0 panic=-1 quiet provision.test=fmt-42 words='a b'"
ALL_FORMATS = sorted(FORMATS)
MODULES = ("lib/libcrc32c.ko", "fs/squashfs/squashfs.ko", "fs/erofs/erofs.ko")

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
echo "{MARKER}"
echo "CMDLINE=$(cat /proc/cmdline)"
fs=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in provision.rootfs=*) fs="${{arg#*=}}" ;; esac
done
if [ -n "$fs" ]; then
  for m in libcrc32c squashfs erofs; do insmod /lib/modules/$m.ko 2>/dev/null; done
  i=0; while [ ! -b /dev/nvme0n1 ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
  mkdir -p /mnt
  mount -t "$fs" -o ro /dev/nvme0n1 /mnt && echo "ROOTFS=$(cat /mnt/etc/provision-marker)"
fi
poweroff -f
"""


def find_kernel() -> Path:
    kernels = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if not kernels:
        pytest.fail(
            "no Debian cloud kernel installed (apt-get install linux-image-cloud-amd64, see scripts/setup.sh)"
        )
    return Path(kernels[-1])


def write_test_initrd(dest: Path, kernel: Path) -> None:
    version = kernel.name.removeprefix("vmlinuz-")
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        ("bin", 0o40755, b"", (0, 0)),
        ("bin/busybox", 0o100755, busybox, (0, 0)),
        ("dev", 0o40755, b"", (0, 0)),
        ("dev/console", 0o20600, b"", (5, 1)),
        ("dev/null", 0o20666, b"", (1, 3)),
        ("init", 0o100755, INIT.encode(), (0, 0)),
        ("lib", 0o40755, b"", (0, 0)),
        ("lib/modules", 0o40755, b"", (0, 0)),
        ("mnt", 0o40755, b"", (0, 0)),
        ("proc", 0o40755, b"", (0, 0)),
    ]
    for module in MODULES:
        path = Path(f"/lib/modules/{version}/kernel/{module}")
        if path.exists():
            entries.append((f"lib/modules/{path.name}", 0o100644, path.read_bytes(), (0, 0)))
    raw = newc_archive(entries, mtime=EPOCH)
    dest.write_bytes(gzip.compress(raw, compresslevel=6, mtime=0))


def write_test_rootfs(dest: Path) -> None:
    """A small root tar: a marker, a file owned by 1000:1000, a setuid file, a device node,
    a symlink and busybox."""

    def add(
        tar: tarfile.TarFile,
        name: str,
        kind: bytes,
        data: bytes = b"",
        mode: int = 0o644,
        uid: int = 0,
    ) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, EPOCH, uid, uid
        if kind == tarfile.CHRTYPE:
            info.devmajor, info.devminor = 5, 1
        if kind == tarfile.SYMTYPE:
            info.linkname = "busybox"
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "home", "home/user"):
            add(tar, d, tarfile.DIRTYPE, mode=0o755, uid=1000 if d == "home/user" else 0)
        add(
            tar,
            "bin/busybox",
            tarfile.REGTYPE,
            Path(shutil.which("busybox") or "/bin/busybox").read_bytes(),
            0o755,
        )
        add(tar, "bin/sh", tarfile.SYMTYPE)
        add(tar, "dev/console", tarfile.CHRTYPE, mode=0o600)
        add(tar, "etc/provision-marker", tarfile.REGTYPE, ROOTFS_MARKER.encode() + b"\n")
        add(tar, "bin/su", tarfile.REGTYPE, b"#!/bin/sh\n", 0o4755)
        add(tar, "home/user/notes", tarfile.REGTYPE, b"mine\n", 0o600, uid=1000)


@pytest.fixture(scope="session")
def boot_inputs(tmp_path_factory: pytest.TempPathFactory) -> BootInputs:
    src = tmp_path_factory.mktemp("inputs")
    kernel = find_kernel()
    shutil.copyfile(kernel, src / "kernel")
    write_test_initrd(src / "initrd.img", kernel)
    write_test_rootfs(src / "rootfs.tar")
    return BootInputs(
        kernel=src / "kernel",
        initrd=src / "initrd.img",
        cmdline=CMDLINE,
        rootfs_tar=src / "rootfs.tar",
        digest=DIGEST,
        source_date_epoch=EPOCH,
        name="tiny",
    )


@dataclass(frozen=True)
class Built:
    fmt: str
    files: list[Path]


def write_format(
    fmt: str, inputs: BootInputs, dest: Path, options: FormatOptions | None = None
) -> list[Path]:
    """Write ``fmt`` as the pipeline does: given only the inputs the writer declares."""
    dest.mkdir(parents=True, exist_ok=True)
    writer = FORMATS[fmt]
    return writer.write(inputs.only(writer.needs), dest, options or FormatOptions())


@pytest.fixture(scope="session")
def first_build(
    tmp_path_factory: pytest.TempPathFactory, boot_inputs: BootInputs
) -> dict[str, Built]:
    """Every format, built once per test session (per xdist worker)."""
    root = tmp_path_factory.mktemp("build-a")
    return {fmt: Built(fmt, write_format(fmt, boot_inputs, root / fmt)) for fmt in ALL_FORMATS}


OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


def qemu_boot(
    workdir: Path,
    *,
    kind: str,
    firmware: str,
    image: Path | None = None,
    disk_format: str = "raw",
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str = "",
    timeout: float = 150,
) -> tuple[str, float]:
    """Boot under TCG; return the serial console output and the seconds it took."""
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "512",
        "-nographic",
        "-monitor",
        "none",
        "-no-reboot",
        "-snapshot",
    ]
    if firmware == "efi":
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += [
            "-machine",
            "q35",
            "-net",
            "none",
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]
    if kind == "cdrom":
        argv += ["-cdrom", str(image)]
    elif kind == "disk":
        argv += ["-drive", f"file={image},format={disk_format},if=virtio"]
    else:
        argv += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", append]
        if image is not None:
            argv += [
                "-drive",
                f"file={image},format=raw,if=none,id=root,readonly=on",
                "-device",
                "nvme,drive=root,serial=provision",
            ]
    start = time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    return proc.stdout.decode(errors="replace"), time.monotonic() - start


def format_boot_method(fmt: str) -> tuple[str, str, str]:
    method = boot_method(fmt)
    return method.kind, method.firmware, method.disk_format


def env_without_tools() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PATH"}


# --- the real components (provision pkg build), for booting images to the agent --------------

REPO = Path(__file__).resolve().parents[2]
# Shared with tests/cluster_e2e: the component images, built once and kept across runs.
COMPONENT_STORE = Path(os.environ.get("PROVISION_E2E_CACHE", "/var/tmp/provision-e2e-oci"))
AGENT_COMPONENTS = ("pkg/kernel", "pkg/init", "pkg/dhcpcd", "pkg/agent")


def provision_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m provision ARGS`` in the repository, with the component store as its cache."""
    return run_provision(
        *args, cwd=REPO, env={"PROVISION_CACHE": str(COMPONENT_STORE)}, timeout=timeout
    )


@pytest.fixture(scope="session")
def component_store() -> Path:
    """The store holding kernel, init, dhcpcd and agent as `provision pkg build` makes them
    (a no-op of a few seconds when they are current; a lock keeps xdist workers apart)."""
    COMPONENT_STORE.parent.mkdir(parents=True, exist_ok=True)
    with open(COMPONENT_STORE.parent / f".{COMPONENT_STORE.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = provision_cli("pkg", "build", "-q", *AGENT_COMPONENTS)
    assert done.returncode == 0, done.stdout + done.stderr
    return COMPONENT_STORE


def write_agent_spec(dest: Path) -> Path:
    """The smallest machine the agent reports on: examples/web.yml's kernel, init, dhcpcd
    (for the published port) and agent, console on the serial port only."""
    web = yaml.safe_load((REPO / "examples/web.yml").read_text())
    services = [s for s in web["services"] if s["name"] in ("dhcpcd", "agent")]
    spec = {
        "kernel": {"image": web["kernel"]["image"], "cmdline": "console=ttyS0"},
        "init": web["init"],
        "services": services,
    }
    dest.write_text(yaml.safe_dump(spec, sort_keys=False))
    return dest
