"""provision serve against nginx, side by side in one run, and 1,000 machines booting at once.

1. HTTP throughput: wrk (pinned to CPU 1) downloads a 14 MiB "kernel" and a 9 MiB "initrd"
   (the sizes of web.yml's) from provision serve and from nginx (each pinned to CPU 0,
   sendfile on, one worker), alternating, 3 rounds of 5 s per file and server. Reported: MiB/s
   and server CPU-seconds per GiB sent (from /proc/PID/stat), and the ratios to nginx.
   Goals: throughput >= 0.8x nginx's, CPU-seconds per GiB <= 2x nginx's.
2. Boot storm: 1,000 inventory machines ask for their iPXE script and their metadata at once
   (wrk on CPU 1 with 1,000 connections, each request a different machine); p50 / p99 latency,
   and the share of CPU 0 the server got (other jobs on the machine take the rest).
   Goal: p99 < 100 ms.

Run: .venv/bin/python bench/serve_bench.py [--seconds 5] [--rounds 3] [--connections 8]
     [--part all|http|storm]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"web-kernel": 14 * 1024 * 1024, "web-initrd.img": 9 * 1024 * 1024}
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not start")


def start_nginx(work: Path, root: Path, port: int) -> subprocess.Popen[bytes]:
    (work / "nginx").mkdir()
    conf = work / "nginx" / "nginx.conf"
    conf.write_text(f"""user root; daemon off; worker_processes 1; error_log {work}/nginx/error.log; pid {work}/nginx/pid;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {work}/nginx;
  proxy_temp_path {work}/nginx; fastcgi_temp_path {work}/nginx; uwsgi_temp_path {work}/nginx; scgi_temp_path {work}/nginx;
  server {{ listen 127.0.0.1:{port}; location /files/ {{ alias {root}/; }} }} }}
""")
    return subprocess.Popen(
        ["taskset", "-c", "0", "nginx", "-c", str(conf), "-p", str(work / "nginx")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_serve(work: Path, root: Path, lab: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "provision",
            "serve",
            "--lab",
            str(lab),
            "--root",
            str(root),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def server_pid(process: subprocess.Popen[bytes]) -> int:
    """The pid doing the work (nginx's single worker, or the serve process itself)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    if children.exists():
        kids = children.read_text().split()
        if kids:
            return int(kids[0])
    return process.pid


def wrk(url: str, seconds: float, connections: int) -> float:
    """Bytes per second wrk read from ``url``."""
    done = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", done.stdout)
    assert match, done.stdout
    unit = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[match.group(2)]
    return float(match.group(1)) * unit


def throughput(args: argparse.Namespace, work: Path, root: Path, lab: Path) -> None:
    servers = {"provision serve": start_serve, "nginx": None}
    ports = {"provision serve": free_port(), "nginx": free_port()}
    procs = {
        "provision serve": start_serve(work, root, lab, ports["provision serve"]),
        "nginx": start_nginx(work, root, ports["nginx"]),
    }
    try:
        for name in servers:
            wait_up(f"http://127.0.0.1:{ports[name]}/files/web-kernel")
            for file, size in SIZES.items():  # both really serve the files
                got = requests.get(f"http://127.0.0.1:{ports[name]}/files/{file}", timeout=30)
                assert got.status_code == 200 and len(got.content) == size, (
                    name,
                    file,
                    got.status_code,
                )
        rates: dict[str, list[float]] = {name: [] for name in servers}
        cost: dict[str, list[float]] = {name: [] for name in servers}
        for _round in range(args.rounds):
            for name in servers:
                pid = server_pid(procs[name])
                before = cpu_seconds(pid)
                sent = 0.0
                for file in SIZES:
                    rate = wrk(
                        f"http://127.0.0.1:{ports[name]}/files/{file}",
                        args.seconds,
                        args.connections,
                    )
                    rates[name].append(rate)
                    sent += rate * args.seconds
                cost[name].append((cpu_seconds(pid) - before) / (sent / 1024**3))
        print(
            f"HTTP, {args.connections} connections, {args.rounds} rounds x {len(SIZES)} files x {args.seconds:g} s "
            "(server on CPU 0, wrk on CPU 1)"
        )
        for name in servers:
            print(
                f"  {name:<16} {statistics.median(rates[name]) / 1024**2:8.0f} MiB/s   "
                f"{statistics.median(cost[name]):.3f} CPU-s/GiB"
            )
        ratio = statistics.median(rates["provision serve"]) / statistics.median(rates["nginx"])
        cpu_ratio = statistics.median(cost["provision serve"]) / statistics.median(cost["nginx"])
        print(
            f"  throughput ratio {ratio:.2f}x nginx (goal >= 0.8)   CPU per GiB {cpu_ratio:.2f}x nginx (goal <= 2)"
        )
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=10)


def storm(work: Path, root: Path, machines: int) -> None:
    lab = work / "storm-lab.yml"
    lines = [
        "profiles:",
        "  web: {kernel: web-kernel, initrd: [web-initrd.img], cmdline: console=ttyS0}",
        "groups:",
        "  - {name: all, profile: web, selector: {rack: a}, metadata: {userData: hello}}",
        "machines:",
    ]
    macs = [
        f"52:54:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}" for n in range(machines)
    ]
    lines += [
        f'  - {{name: m{n}, macs: ["{mac}"], labels: {{rack: a}}}}' for n, mac in enumerate(macs)
    ]
    lab.write_text("\n".join(lines) + "\n")
    port = free_port()
    proc = start_serve(work, root, lab, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(f"{base}/boot.ipxe")

        script = work / "storm.lua"  # each request a different machine of the inventory, in turn
        script.write_text(f"""
counter = 0
request = function()
  counter = counter + 1
  local n = counter % {machines}
  local mac = string.format("52:54:00:%02x:%02x:%02x", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  if counter % 2 == 0 then return wrk.format("GET", "/v1/metadata/" .. mac) end
  return wrk.format("GET", "/ipxe?platform=pcbios&mac=" .. mac)
end
""")
        cpu_before, wall_before = cpu_seconds(proc.pid), time.monotonic()
        done = subprocess.run(
            [
                "taskset",
                "-c",
                "1",
                "wrk",
                "-t1",
                f"-c{machines}",
                "-d5s",
                "--latency",
                "--timeout",
                "5s",
                "-s",
                str(script),
                base,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        share = (cpu_seconds(proc.pid) - cpu_before) / (time.monotonic() - wall_before)
        percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", done.stdout, re.M))
        if os.environ.get("SERVE_BENCH_RAW"):  # wrk's own report
            print(done.stdout)
        requests_per_s = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", done.stdout)
        print(
            f"  {machines} connections, half iPXE scripts, half metadata: p50 {percentiles.get('50')}  "
            f"p99 {percentiles.get('99')} (goal < 100ms)  {requests_per_s.group(1) if requests_per_s else '?'} req/s"
            + f"  (the server had {share:.0%} of its CPU)"
            + (f"  errors: {errors.group(0)}" if errors else "")
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument(
        "--part", choices=("all", "http", "storm"), default="all", help="run one part only"
    )
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool}: apt-get install nginx wrk util-linux")
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        for name, size in SIZES.items():
            (root / name).write_bytes(os.urandom(size))
        lab = work / "lab.yml"
        lab.write_text("default: exit\n")
        if args.part in ("all", "http"):
            throughput(args, work, root, lab)
        if args.part in ("all", "storm"):
            print(f"Boot storm: {args.machines} machines ask for their script and metadata at once")
            storm(work, root, args.machines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
