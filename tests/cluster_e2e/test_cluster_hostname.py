"""Each machine of a cluster is named by the cluster, and that name becomes its hostname the
way cloud-init does it: the qemu target puts it in the CIDATA CD's meta-data
(``local-hostname``) of every VM, user data or not, and the image's ``metadata`` service
applies it. Checked from outside: the agent of each machine of `provision up` (examples/web.yml,
no ``data`` property) reports the machine's name as its hostname."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cluster_boot import REPO, components, machines_of, provision, up  # noqa: F401 - fixture

from provision.providers.qemu.provider import read_agent
from provision.providers.qemu.state import list_vms

pytestmark = [pytest.mark.boot, pytest.mark.timeout(600)]

CLUSTER = """\
cluster: names
journal: journal.db
providers:
  local:
    type: qemu
    options: {stateRoot: state, accel: tcg, stopTimeout: 5s}
groups:
  - name: web
    provider: local
    image: web.yml
    size: 2
    properties: {mem: 256M, cpus: 1}
    health: {port: 7080, path: /, startupTimeout: 150s, unhealthyTimeout: 60s}
"""


@pytest.fixture
def cluster_dir(tmp_path: Path, components: Path) -> Iterator[Path]:  # noqa: F811
    (tmp_path / "web.yml").write_text((REPO / "examples/web.yml").read_text())
    (tmp_path / "cluster.yml").write_text(CLUSTER)
    yield tmp_path
    for vm in list_vms(tmp_path / "state"):  # whatever happened, leave no VM behind
        if vm.pid is not None:
            os.kill(vm.pid, 9)


def test_each_machine_s_hostname_is_its_name(cluster_dir: Path) -> None:
    machines = machines_of(up(cluster_dir, 240))
    assert len(machines) == 2
    names = set()
    for machine in machines:
        host, port = machine["agent"].split(":")
        reply = read_agent(host, int(port))
        assert reply is not None
        assert reply.hostname == machine["machine"] != "provision"
        names.add(reply.hostname)
    assert len(names) == 2
    assert {vm.name for vm in list_vms(cluster_dir / "state")} == names
    done = provision("down", "cluster.yml", cwd=cluster_dir)
    assert done.returncode == 0, done.stderr
