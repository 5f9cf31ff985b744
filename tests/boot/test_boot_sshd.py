"""examples/sshd.yml boots; root logs in over SSH (through a published port) with the key
given as user data on a CIDATA CD, and with no other key."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boot_rig as rig
import pytest
from boot_machine import Machine, free_port, write_cidata

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot-sshd"), pytest.mark.timeout(300)]


@dataclass
class Sshd:
    machine: Machine
    port: int
    key: Path
    other_key: Path

    def ssh(self, key: Path, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-i", str(key), "-p", str(self.port), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "root@127.0.0.1", command],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip


def make_key(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    out: Path = tmp_path_factory.mktemp("sshd")
    key, other = make_key(out / "id_test"), make_key(out / "id_other")
    user_data = {"ssh": {"entries": {"authorized_keys": {
        "content": (out / "id_test.pub").read_text(), "perm": "0600"}}}}  # fmt: skip
    kernel, initrd, _ = rig.build_with_provision([rig.REPO / "examples/sshd.yml"], out, "sshd")
    cidata = write_cidata(out / "cidata.iso", json.dumps(user_data), hostname="ssh-test")
    port = free_port()
    # on QEMU's pc machine: the CIDATA CD on IDE (the other boot tests run q35, its CD on virtio-scsi)
    machine = Machine(kernel, initrd, out, publish=[(port, 22)], cidata=cidata, machine="pc")
    try:
        yield Sshd(machine, port, key, other)
    finally:
        machine.kill()


def test_root_logs_in_with_the_user_data_key(sshd: Sshd) -> None:
    deadline = time.monotonic() + 120
    while True:
        done = sshd.ssh(sshd.key, "id -u; hostname; cat /run/config/ssh/authorized_keys")
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert done.returncode == 0, done.stderr + sshd.machine.console[-2000:]
    uid, hostname, key = done.stdout.splitlines()[:3]
    assert (uid, hostname) == ("0", "ssh-test")
    assert key.endswith(" id_test")


def test_another_key_is_refused(sshd: Sshd) -> None:
    # This test may run first, on its own worker: wait until sshd answers at all.
    deadline = time.monotonic() + 120
    while True:
        done = sshd.ssh(sshd.other_key, "true")
        unreachable = any(
            s in done.stderr
            for s in (
                "Connection refused",
                "Connection reset",
                "Connection closed",
                "kex_exchange_identification",
                "timed out",
            )
        )
        if not unreachable or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert done.returncode == 255
    assert "Permission denied" in done.stderr
