"""Boot time under TCG: examples/web.yml to "every service running" (as its agent reports
through a published port) against the floor, the same kernel booting a bare busybox
initrd to a shell, side by side. Also minimal.yml to its console shell.

    python bench/boot_bench.py [--runs 3] [--json out.json]

Beside the totals it prints the per-step table: the guest uptime (median over the runs) at
which each step init marks was reached, as init wrote it to /run/provision/boot-times.json
(web: served by the agent at /cgi-bin/boot-times; minimal: read on the console shell).
Each total is also given on the guest's clock (the floor's uptime when its shell starts,
minimal's console shell's start, the uptime web's agent reports with every service
running): QEMU's own start-up before the guest clock runs (1.2-3 s here, moving with the
load of the host) is not in it. The goals are on the host clock. The third measure is
the CPU time the QEMU process used until ready (user + system, all its threads): under
TCG the guest's work is the host's CPU work, so it moves least when other jobs share the
host (both clocks stretch when QEMU waits for a core). The load average is printed at
the start and the end.

Every machine (the floor too) is tests/boot/boot_machine.py's: q35, `-nodefaults`, one vCPU,
512 MB, virtio-rng and virtio-net, as `provision run qemu` boots. Images are built by the real pipeline (`provision pkg build` of the components, then
`provision build`, default gzip initrd; see tests/boot/boot_rig.py). Runs are sequential (2 cores:
parallel VMs would slow each other). Goals: web <= 2 x floor, minimal <= 1.5 x floor. Exit
status 1 when over.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "boot"))

import boot_rig as rig  # noqa: E402
from boot_machine import Machine, free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOALS = {"web": 2.0, "minimal": 1.5}
Steps = list[tuple[str, float]]
FLOOR_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
read -r up _ </proc/uptime
echo FLOOR-SHELL-READY "$up"
exec /bin/busybox sh
"""


def build_floor(out: Path) -> Path:
    """A bare busybox initrd whose /init starts a shell."""
    root = out / "floor-root"
    (root / "bin").mkdir(parents=True)
    (root / "proc").mkdir()
    busybox = rig.fetch_package("busybox-static") / "bin/busybox"
    (root / "bin/busybox").write_bytes(busybox.read_bytes())
    (root / "bin/busybox").chmod(0o755)
    (root / "init").write_text(FLOOR_INIT)
    (root / "init").chmod(0o755)
    (root / "dev").mkdir()
    subprocess.run(["mknod", "-m", "600", str(root / "dev/console"), "c", "5", "1"], check=True)
    initrd = out / "floor.img"
    rig.write_initrd(root, initrd)
    return initrd


@dataclass(frozen=True)
class Boot:
    """One boot to ready: host seconds since QEMU started, the guest's uptime, the CPU
    seconds QEMU used, and init's steps (none for the floor)."""

    host_s: float
    guest_s: float
    cpu_s: float
    steps: Steps


def qemu_cpu(machine: Machine) -> float:
    """CPU seconds (user + system, every thread) QEMU has used so far."""
    fields = Path(f"/proc/{machine.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_floor(kernel: Path, initrd: Path, out: Path) -> Boot:
    """To the floor's shell."""
    machine = Machine(kernel, initrd, out)  # the images' command line
    try:
        match = machine.wait_for(r"FLOOR-SHELL-READY (\d+\.\d+)", timeout=120)
        took, cpu = time.monotonic() - machine.started, qemu_cpu(machine)
        return Boot(took, float(match.group(1)), cpu, [])
    finally:
        machine.kill()


def parse_steps(document: Any) -> Steps:
    """boot-times.json's steps as (name, uptime); a step's details after ": " are dropped
    where they vary (the modules loaded)."""
    steps: Steps = []
    for entry in document["steps"]:
        name = str(entry["step"])
        if name.startswith(("modules loaded:", "IDE modules loaded:")):
            name = name.split(":")[0]
        steps.append((name, float(entry["uptime"])))
    return steps


def steps_with_services(read: Callable[[], Steps], deadline: float) -> Steps:
    """``read()`` again until its steps have the services' starts, or the deadline: init
    writes boot-times.json a second after the last service started, at the lowest priority
    (the table wants those steps; the boot's time is already taken)."""
    while True:
        steps = read()
        if any(n.startswith("service ") for n, _ in steps) or time.monotonic() > deadline:
            return steps
        time.sleep(0.5)


def time_minimal(kernel: Path, initrd: Path, out: Path) -> Boot:
    """To the console shell (the guest's uptime: when that shell started)."""
    machine = Machine(kernel, initrd, out)
    try:
        machine.wait_for(r"# \x1b\[6n", timeout=120)
        took, cpu = time.monotonic() - machine.started, qemu_cpu(machine)
        # field 22 of the prompt shell's stat: its start, in clock ticks (USER_HZ 100)
        started = int(machine.shell("cut -d ' ' -f 22 /proc/$$/stat").strip()) / 100
        shell = "cat /run/provision/boot-times.json 2>/dev/null || true"
        steps = steps_with_services(
            lambda: parse_steps(json.loads(machine.shell(shell) or '{"steps": []}')),
            time.monotonic() + 10,
        )
        return Boot(took, started, cpu, steps)
    finally:
        machine.kill()


def read_http(sock: socket.socket, timeout: float) -> bytes:
    """The whole answer on ``sock`` (HTTP/1.0: the server closes), within ``timeout``."""
    sock.settimeout(timeout)
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def poll_agent(port: int, path: str, deadline: float) -> Any:
    """The JSON the agent answers at ``path``, asked until it answers (or the deadline):
    one request at a time, again 0.05 s after a refused or failed one.

    Ask only once the guest's interface has its address (time_web waits for dhcpcd's line
    on the console). Through QEMU's user network a connection to a published port is
    accepted at once on the host, and its SYN to the guest waits (for the guest's ARP
    answer) until the guest has its address: requests sent earlier pile up and are all
    answered the moment the address is set, each by its own status CGI on the guest's one
    vCPU, slowing the answer being timed (until this session the bench opened one every
    0.2 s and kept 4: 0.1 s of polling steps on average, and up to 4 CGIs at once)."""
    request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(request)
                answer = read_http(sock, 5)
        except OSError:
            answer = b""
        head, _, body = answer.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]:
            try:
                return json.loads(body)
            except ValueError:
                pass
        time.sleep(0.05)
    raise SystemExit(f"the agent never answered {path}")


def time_web(kernel: Path, initrd: Path, out: Path, services: int) -> Boot:
    """To the agent's first answer with every service running (the uptime it reported)."""
    port = free_port()
    machine = Machine(kernel, initrd, out, publish=[(port, 7080)])
    try:
        deadline = time.monotonic() + 180
        # the address is set (dhcpcd's default.script prints this line right after): ask now
        machine.wait_for(r"dhcpcd: \S+ is [0-9]", timeout=180)
        while True:
            status = poll_agent(port, "/", deadline)
            states = [s["state"] for s in status["services"].values()]
            if len(states) == services and set(states) == {"running"}:
                took, cpu = time.monotonic() - machine.started, qemu_cpu(machine)
                steps = steps_with_services(
                    lambda: parse_steps(poll_agent(port, "/cgi-bin/boot-times", deadline)),
                    min(deadline, time.monotonic() + 10),
                )
                return Boot(took, float(status["uptime"]), cpu, steps)
            time.sleep(0.1)
    finally:
        machine.kill()


def step_table(steps: dict[str, list[Steps]]) -> list[tuple[str, dict[str, float]]]:
    """Rows (step, {image: median uptime}) in the order the steps happened."""
    order: dict[str, float] = {}
    values: dict[str, dict[str, list[float]]] = {}
    for image, runs in steps.items():
        for run in runs:
            for name, uptime in run:
                values.setdefault(name, {}).setdefault(image, []).append(uptime)
                order[name] = min(order.get(name, uptime), uptime)
    rows = sorted(values.items(), key=lambda kv: order[kv[0]])
    return [(name, {img: statistics.median(v) for img, v in per.items()}) for name, per in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="boot-bench-") as tmp:
        work = Path(tmp)
        (work / "web").mkdir()
        (work / "minimal").mkdir()
        kernel, web_initrd, _ = rig.build_with_provision(
            [REPO / "examples/web.yml"], work / "web", "web"
        )
        _, min_initrd, _ = rig.build_with_provision(
            [REPO / "examples/minimal.yml"], work / "minimal", "minimal"
        )
        floor_initrd = build_floor(work)
        services = len(rig.load_specs([REPO / "examples/web.yml"])["services"])
        boots: dict[str, list[Boot]] = {"floor": [], "minimal": [], "web": []}
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        for run in range(args.runs):
            for name in boots:
                out = work / f"{name}-{run}"
                out.mkdir()
                if name == "floor":
                    boot = time_floor(kernel, floor_initrd, out)
                elif name == "minimal":
                    boot = time_minimal(kernel, min_initrd, out)
                else:
                    boot = time_web(kernel, web_initrd, out, services)
                boots[name].append(boot)
                print(f"run {run + 1}: {name:8s} {boot.host_s:6.2f} s (guest uptime"
                      f" {boot.guest_s:.2f} s, QEMU CPU {boot.cpu_s:.2f} s)", file=sys.stderr)  # fmt: skip
        load_after = Path("/proc/loadavg").read_text().split()[:3]
    report: dict[str, dict[str, Any]] = {}
    for name, runs in boots.items():
        row: dict[str, Any] = {}
        for key, measure in (("host", "host_s"), ("guest", "guest_s"), ("cpu", "cpu_s")):
            values = [getattr(b, measure) for b in runs]
            floor = statistics.median(getattr(b, measure) for b in boots["floor"])
            row[f"{key}_s"] = round(statistics.median(values), 2)
            row[f"{key}_runs_s"] = [round(v, 2) for v in values]
            row[f"{key}_x_floor"] = round(statistics.median(values) / floor, 2)
        report[name] = row
    steps = {name: [b.steps for b in boots[name]] for name in ("minimal", "web")}
    table = step_table(steps)
    print(f"{'step (guest uptime, median)':58s} {'minimal':>8s} {'web':>8s}")
    for step, per in table:
        cells = [f"{per[img]:7.2f}s" if img in per else f"{'-':>8s}" for img in ("minimal", "web")]
        print(f"{step[:58]:58s} {cells[0]} {cells[1]}")
    print()
    print(f"load average (1, 5, 15 min): {' '.join(load_before)} at the start,"
          f" {' '.join(load_after)} at the end")  # fmt: skip
    print(f"{'image':10s} {'host':>8s} {'x floor':>8s} {'guest':>8s} {'x floor':>8s}"
          f" {'QEMU CPU':>9s} {'x floor':>8s}   (QEMU TCG, boot to ready, medians)")  # fmt: skip
    for name, row in report.items():
        print(f"{name:10s} {row['host_s']:7.2f}s {row['host_x_floor']:7.2f}x"
              f" {row['guest_s']:7.2f}s {row['guest_x_floor']:7.2f}x"
              f" {row['cpu_s']:8.2f}s {row['cpu_x_floor']:7.2f}x")  # fmt: skip
    ok = True
    for name, goal in GOALS.items():
        met = report[name]["host_x_floor"] <= goal
        ok = ok and met
        print(f"goal: {name} <= {goal}x floor (host clock): {'met' if met else 'NOT met'}")
    if args.json:
        report["load"] = {"start": load_before, "end": load_after}
        report["steps"] = {
            step: {img: round(v, 2) for img, v in per.items()} for step, per in table
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
