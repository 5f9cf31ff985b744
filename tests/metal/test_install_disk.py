"""A machine's local disk, one rule on both sides: pkg/init's ``install-disk`` (what a metal
machine runs when it network-boots with ``provision.install=URL``), run here under the host's
busybox with only busybox's applets on its PATH and the image fetched over HTTP, writes the
very bytes ``builders.disk.write_install`` writes into the same disk files: a blank disk gets
the whole image, a disk of provision's layout gets the new boot partition and keeps its
provision-data partition (a file written there survives), anything else is left alone."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from components_testkit import REPO

from provision.builders.base import MIB, BootInputs, FormatOptions
from provision.builders.disk import read_partitions, write_install, write_raw_disk
from provision.errors import UsageError

SCRIPT = REPO / "pkg/init/files/install-disk"
DIGEST = "sha256:" + "ab" * 32


class ImageServer:
    """HTTP on 127.0.0.1 serving files by name (GET and HEAD, Content-Length); a name in
    ``cut`` announces its full length and sends only its first MiBs (a dropped connection)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cut: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _send(self, body: bool) -> None:
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data[: server.cut.get(path.name, len(data))])

            def do_GET(self) -> None:  # noqa: N802
                self._send(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._send(False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ImageServer]:
    (tmp_path / "served").mkdir()
    served = ImageServer(tmp_path / "served")
    yield served
    served.close()


@pytest.fixture(scope="module")
def busybox_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of every busybox applet (the init image installs them all), nothing else."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("needs busybox on the host (apt-get install busybox-static)")
    bin_dir = tmp_path_factory.mktemp("busybox-bin")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for name in applets.stdout.split():
        (bin_dir / name).symlink_to(busybox)
    return bin_dir


def build_image(directory: Path, firmware: str, seed: int, kernel_mib: int) -> Path:
    """A raw disk of provision's layout (24 MiB boot partition, 16 MiB provision-data) around
    a stand-in kernel and initrd of ``kernel_mib`` MiB each (random bytes: every block differs)."""
    directory.mkdir(parents=True)
    kernel, initrd = directory / "kernel", directory / "initrd.img"
    rng = random.Random(seed)
    kernel.write_bytes(rng.randbytes(kernel_mib * MIB))
    initrd.write_bytes(rng.randbytes(kernel_mib * MIB))
    inputs = BootInputs(
        kernel, initrd, f"console=ttyS0 image={seed}", None, DIGEST[:-2] + f"{seed:02x}", 0, "web"
    )
    image = directory / f"web-{firmware}.img"
    options = FormatOptions(boot_size=24 * MIB, data_size=16 * MIB)
    write_raw_disk(inputs, image, options, "bios" if firmware == "bios" else "efi")
    return image


def guest_install(busybox_path: Path, url: str, disk: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["busybox", "sh", str(SCRIPT), url, str(disk)],
        env={"PATH": str(busybox_path), "TMPDIR": str(disk.parent)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def blank_disk(path: Path, mib: int, fill: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.truncate(mib * MIB)
        if fill:
            f.write(fill)
    return path


def data_partition_file(disk: Path, scratch: Path) -> Path:
    """The provision-data partition of ``disk`` as a file of its own (what debugfs edits)."""
    _, parts = read_partitions(disk)
    part = scratch / "data.ext4"
    with open(disk, "rb") as f:
        f.seek(parts[1].start)
        part.write_bytes(f.read(parts[1].size))
    return part


def write_note(disk: Path, scratch: Path, text: str) -> None:
    """Write ``note`` into the disk's data partition (as the machine would: a file in ext4)."""
    _, parts = read_partitions(disk)
    part = data_partition_file(disk, scratch)
    note = scratch / "note"
    note.write_text(text)
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {note} note", part], check=True, capture_output=True
    )
    with open(disk, "r+b") as f:
        f.seek(parts[1].start)
        f.write(part.read_bytes())


def read_note(disk: Path, scratch: Path) -> str:
    part = data_partition_file(disk, scratch)
    done = subprocess.run(
        ["debugfs", "-R", "cat note", part], check=True, capture_output=True, text=True
    )
    return done.stdout


@pytest.mark.parametrize("firmware", ["bios", "efi"])
def test_install_then_reimage_writes_what_the_host_writes_and_keeps_the_data(
    firmware: str, tmp_path: Path, server: ImageServer, busybox_path: Path
) -> None:
    v1 = build_image(tmp_path / "v1", firmware, 1, 4)
    v2 = build_image(tmp_path / "v2", firmware, 2, 6)  # a bigger kernel: still fits
    shutil.copyfile(v1, server.root / "v1.img")
    shutil.copyfile(v2, server.root / "v2.img")
    # a blank disk (garbage, but no partition table) bigger than the image
    garbage = os.urandom(300 * 1024)
    host, guest = (blank_disk(tmp_path / f"{n}.disk", 64, garbage) for n in ("host", "guest"))

    assert write_install(v1, host) == "installed"
    done = guest_install(busybox_path, f"{server.url}/v1.img", guest)
    assert done.returncode == 0 and done.stdout.strip() == "installed", done.stderr
    assert host.read_bytes() == guest.read_bytes()
    assert host.read_bytes()[: v1.stat().st_size] == v1.read_bytes()  # the whole image

    write_note(host, tmp_path, "written before the re-image\n")
    with open(host, "r+b") as f:
        f.write(os.urandom(440))  # an older boot loader's code: re-imaging replaces it
    shutil.copyfile(host, guest)
    assert write_install(v2, host) == "reimaged"
    done = guest_install(busybox_path, f"{server.url}/v2.img", guest)
    assert done.returncode == 0 and done.stdout.strip() == "reimaged", done.stderr
    assert host.read_bytes() == guest.read_bytes()
    assert read_note(guest, tmp_path) == "written before the re-image\n"
    label, parts = read_partitions(guest)
    assert (label, parts) == read_partitions(v1)  # the table of the first install, kept
    with open(guest, "rb") as disk, open(v2, "rb") as image:
        boot = parts[0]
        disk.seek(boot.start)
        image.seek(boot.start)
        assert disk.read(boot.size) == image.read(boot.size)  # the new boot partition
        disk.seek(0)
        image.seek(0)
        assert disk.read(440) == image.read(440)  # the new boot code


def test_a_disk_of_another_layout_or_too_small_is_left_alone(
    tmp_path: Path, server: ImageServer, busybox_path: Path
) -> None:
    image = build_image(tmp_path / "v1", "bios", 1, 4)
    shutil.copyfile(image, server.root / "v1.img")
    other = blank_disk(tmp_path / "other.disk", 64)
    subprocess.run(
        ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(other)],
        input=b"label: dos\nstart=4096, size=8192, type=83\n",
        check=True,
    )
    before = other.read_bytes()
    with pytest.raises(UsageError, match="does not fit"):
        write_install(image, other)
    done = guest_install(busybox_path, f"{server.url}/v1.img", other)
    assert done.returncode == 3 and "left alone" in done.stderr, done.stderr
    assert other.read_bytes() == before

    small = blank_disk(tmp_path / "small.disk", 32)  # the image is 41 MiB
    with pytest.raises(UsageError, match="smaller than the image"):
        write_install(image, small)
    done = guest_install(busybox_path, f"{server.url}/v1.img", small)
    assert done.returncode == 3 and "smaller than the image" in done.stderr, done.stderr
    assert small.read_bytes() == bytes(32 * MIB)


def test_an_interrupted_install_leaves_the_disk_blank(
    tmp_path: Path, server: ImageServer, busybox_path: Path
) -> None:
    image = build_image(tmp_path / "v1", "bios", 1, 4)
    shutil.copyfile(image, server.root / "v1.img")
    server.cut["v1.img"] = 20 * MIB
    disk = blank_disk(tmp_path / "guest.disk", 64)
    done = guest_install(busybox_path, f"{server.url}/v1.img", disk)
    assert done.returncode == 1 and "short read" in done.stderr, done.stderr
    with open(disk, "rb") as f:
        assert f.read(MIB) == bytes(MIB)  # no partition table: the next boot installs it whole
    del server.cut["v1.img"]
    done = guest_install(busybox_path, f"{server.url}/v1.img", disk)
    assert done.returncode == 0 and done.stdout.strip() == "installed", done.stderr
    assert disk.read_bytes()[: image.stat().st_size] == image.read_bytes()
