"""A real 3-member etcd cluster (Debian's etcd-server) on 127.0.0.1, for tests and benchmarks:
members can be killed and restarted on their data directories."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ETCD = "/usr/bin/etcd"


def free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    root: Path
    members: list[Member] = field(default_factory=list)
    token: str = ""

    @classmethod
    def create(cls, root: Path, size: int = 3) -> EtcdCluster:
        ports = free_ports(2 * size)
        cluster = cls(root, token=f"provision-test-{os.getpid()}-{time.monotonic_ns()}")
        for i in range(size):
            cluster.members.append(Member(f"m{i}", ports[2 * i], ports[2 * i + 1], root / f"m{i}"))
        return cluster

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, prefix: str) -> str:
        return f"etcd://{','.join(self.endpoints)}/{prefix}"

    def start_member(self, member: Member) -> None:
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        state = "existing" if (member.data_dir / "member").exists() else "new"
        argv = [
            ETCD,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--logger=zap",
            "--log-level=error",
            "--listen-client-urls",
            f"http://127.0.0.1:{member.client_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{member.client_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{member.peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{member.peer_port}",
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self.token,
            "--heartbeat-interval=50",
            "--election-timeout=500",
        ]
        log = open(self.root / f"{member.name}.log", "ab")  # noqa: SIM115 (the process keeps it)
        member.process = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            self.start_member(member)
        self.wait_healthy(self.members)

    def wait_healthy(self, members: list[Member], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            member = pending[0]
            try:
                response = requests.get(f"http://{member.endpoint}/health", timeout=1)
                if response.status_code == 200 and response.json().get("health") == "true":
                    pending.pop(0)
                    continue
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"etcd member {member.name} not healthy after {timeout}s: {(self.root / (member.name + '.log')).read_text()[-2000:]}"
                )
            time.sleep(0.1)

    def leader(self) -> Member:
        for member in self.members:
            if member.process is None or member.process.poll() is not None:
                continue
            try:
                body = requests.post(
                    f"http://{member.endpoint}/v3/maintenance/status", json={}, timeout=1
                ).json()
            except requests.RequestException:
                continue
            leader = str(body.get("leader", ""))
            if leader and leader == str(body.get("header", {}).get("member_id", "")):
                return member
        raise RuntimeError("no etcd leader")

    def kill(self, member: Member) -> None:
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGKILL)
            member.process.wait(10)

    def stop(self) -> None:
        for member in self.members:
            self.kill(member)
