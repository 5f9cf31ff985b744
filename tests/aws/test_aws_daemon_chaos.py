"""`provision daemon` with the aws provider, SIGKILLed again and again against moto (behind the
EC2 layer): while RunInstances answers slowly (the instance is made, the daemon dies before the
answer), after it, between passes. Whatever the timing, every slot ends with exactly one
instance, no instance was ever made twice, and none was ever untagged."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from aws.aws_testkit import SECRET_MARKER
from aws.ec2_standin import Ec2Moto
from reconcile.daemon_process import daemon_argv

from provision.reconcile.provider import TAG_CLUSTER, TAG_GROUP, TAG_SLOT

SIZE = 5
SPEC = """\
cluster: chaos
providers:
  cloud:
    type: aws
    options: {{region: us-east-1, readTimeout: 1s}}
groups:
  - name: web
    provider: cloud
    image: {image}
    size: {size}
    properties: {{instanceType: t3.micro}}
"""


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Daemon:
    def __init__(self, spec: Path, journal: Path, log: list[str]) -> None:
        # a restarted daemon of one host takes its lease back
        argv = daemon_argv(spec, journal, "--owner", "host-a", interval=0.1, resync=0.2)
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.reader = threading.Thread(
            target=lambda: log.extend(self.proc.stdout or []), daemon=True
        )
        self.reader.start()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.reader.join(timeout=5)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self.reader.join(timeout=5)
        return code


@pytest.mark.timeout(120)
def test_sigkilled_daemons_leave_one_tagged_instance_per_slot(ec2: Ec2Moto, tmp_path: Path) -> None:
    started = time.monotonic()
    spec = tmp_path / "cluster.yml"
    spec.write_text(SPEC.format(image=ec2.image(), size=SIZE))
    journal = tmp_path / "journal.db"
    log: list[str] = []
    chance = random.Random(20261201)
    ec2.layer.slow_seconds = (
        1.6  # past the 1 s read time-out: the create happened, its answer is lost
    )
    calls = Counter[str]()
    for round_ in range(7):
        if round_ % 2 == 0:
            ec2.layer.inject("RunInstances", "slow", 2)
        else:
            ec2.layer.inject("RunInstances", "throttle")
        before = len(ec2.layer.calls)
        daemon = Daemon(spec, journal, log)
        wait_for(lambda n=before: len(ec2.layer.calls) > n, 10)  # it is talking to EC2
        time.sleep(chance.uniform(0.05, 1.2))
        daemon.kill()
        calls.update(ec2.layer.calls[before:])
        ec2.layer.faults.clear()
    passes = len(log)
    final = Daemon(spec, journal, log)
    assert wait_for(lambda: any('"listening"' in line for line in log[passes:]), 20)

    def converged() -> bool:
        live = [i for i in ec2.instances() if i["State"]["Name"] in ("pending", "running")]
        return len(live) == SIZE

    assert wait_for(converged, 30), "the cluster did not converge:\n" + "".join(log[-40:])
    time.sleep(1.0)  # a few more passes: nothing more may be made
    assert final.stop() == 0
    made = ec2.instances()
    tags = [{t["Key"]: t["Value"] for t in i.get("Tags", [])} for i in made]
    assert all(
        t.get(TAG_CLUSTER) == "chaos" and t.get(TAG_GROUP) == "web" and TAG_SLOT in t for t in tags
    )
    assert len(made) == SIZE  # never one instance too many, not even one terminated later
    assert sorted(Counter(t[TAG_SLOT] for t in tags).values()) == [1] * SIZE
    assert calls["RunInstances"] > SIZE  # creates were retried across the kills
    events = [json.loads(line) for line in log if line.startswith("{")]
    assert any(e.get("event") == "created" for e in events)
    assert not any(SECRET_MARKER in line for line in log)
    assert SECRET_MARKER not in journal.read_bytes().decode("latin-1")
    assert time.monotonic() - started < 60
