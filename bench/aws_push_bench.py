"""Benchmark of ``provision push aws`` (EBS direct), side by side in one run, against one moto
server (a separate process on 127.0.0.1, so it does not share the pushing process's GIL):

1. a 1 GiB raw disk holding ``--data-mb`` (default 40) MB of incompressible data in scattered
   extents (the rest holes, as builds leave it):
   * ``provision push aws`` (a fresh process, ``--concurrency N``);
   * ``aws s3 cp`` of the same file to a bucket on the same moto (the AWS CLI, a fresh process,
     ``max_concurrent_requests = N``);
   * the floor: reading the whole file once and hashing it with SHA256 (in this process);
   ``--runs`` of each, alternated (so load hits all alike): best and median, and their ratios.
2. the peak RSS of a push of a 4 GiB sparse disk (``--big-data-mb`` of data), from the
   pushing process's own rusage (``os.wait4``). Goal: < 200 MiB.

Every push gets a new image digest (nothing is reused). Usage:
    python bench/aws_push_bench.py [--data-mb 40] [--concurrency 16] [--runs 3] [--big-data-mb 64]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import requests

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
MIB = 1024**2
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(f"{url}/moto-api/", timeout=1)
            return server, url
        except requests.RequestException:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("moto did not start")


def write_disk(path: Path, size: int, data_mb: int, seed: int) -> None:
    """A sparse disk of ``size`` bytes with ``data_mb`` MB of random data in 2 MiB extents
    spread evenly over it."""
    extents = max(1, data_mb // 2)
    stride = size // extents
    with path.open("wb") as f:
        f.truncate(size)
        for i in range(extents):
            f.seek(i * stride)
            f.write(os.urandom(2 * MIB))
    path.with_suffix(".manifest.json").write_text(
        json.dumps(
            {
                "name": "bench",
                "image_digest": "sha256:"
                + hashlib.sha256(f"{seed}{time.time()}".encode()).hexdigest(),
                "platform": "linux/amd64",
                "formats": ["aws"],
                "outputs": [{"file": path.name, "format": "aws", "sha256": "", "size": size}],
            }
        )
    )


def new_digest(disk: Path) -> None:
    manifest = disk.with_suffix(".manifest.json")
    body = json.loads(manifest.read_text())
    body["image_digest"] = "sha256:" + hashlib.sha256(os.urandom(16)).hexdigest()
    manifest.write_text(json.dumps(body))


def environment(url: str, home: Path, concurrency: int) -> dict[str, str]:
    config = home / "config"
    config.write_text(
        f"[default]\nregion = {REGION}\ns3 =\n    max_concurrent_requests = {concurrency}\n"
    )
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "AKIDBENCH",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": str(ROOT),
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one process."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    err = child.stderr.read().decode() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err}")
    return elapsed, int(usage.ru_maxrss)


def push_argv(disk: Path, concurrency: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "provision",
        "push",
        "aws",
        str(disk.with_suffix(".manifest.json")),
        "--quiet",
        "--json",
        "--concurrency",
        str(concurrency),
    ]


def floor(disk: Path) -> float:
    start = time.perf_counter()
    digest = hashlib.sha256()
    with disk.open("rb", buffering=0) as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-mb", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big-data-mb", type=int, default=64)
    args = parser.parse_args()
    aws_cli = shutil.which("aws")
    if aws_cli is None:
        raise SystemExit("the AWS CLI is not installed (pip install awscli)")
    server, url = start_moto()
    work = Path(tempfile.mkdtemp(prefix="aws-push-bench-"))
    try:
        env = environment(url, work, args.concurrency)
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="AKIDBENCH",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket="bench")
        disk = work / "bench.raw"
        write_disk(disk, GIB, args.data_mb, 1)
        results: dict[str, list[float]] = {"push": [], "s3 cp": [], "floor": []}
        for run in range(args.runs):
            new_digest(disk)
            results["push"].append(timed(push_argv(disk, args.concurrency), env)[0])
            results["s3 cp"].append(
                timed(
                    [
                        aws_cli,
                        "s3",
                        "cp",
                        "--only-show-errors",
                        str(disk),
                        f"s3://bench/disk-{run}.raw",
                    ],
                    env,
                )[0]
            )
            results["floor"].append(floor(disk))
        best = {name: min(times) for name, times in results.items()}
        middle = {name: statistics.median(times) for name, times in results.items()}
        print(
            f"1 GiB raw disk, {args.data_mb} MB of data, concurrency {args.concurrency}, {args.runs} runs:"
        )
        for name, times in results.items():
            print(
                f"  {name:<6} best {best[name]:6.2f} s, median {middle[name]:6.2f} s"
                f"   (runs: {', '.join(f'{t:.2f}' for t in times)})"
            )
        print(
            f"  push / s3 cp = {best['push'] / best['s3 cp']:.2f} best, {middle['push'] / middle['s3 cp']:.2f} median"
            f"   (goal < 1)"
        )
        print(
            f"  push / floor = {best['push'] / best['floor']:.2f} best, {middle['push'] / middle['floor']:.2f} median"
            f"   (goal <= 2)"
        )
        disk.unlink()
        big = work / "big.raw"
        write_disk(big, 4 * GIB, args.big_data_mb, 2)
        seconds, rss = timed(push_argv(big, args.concurrency), env)
        print(
            f"4 GiB sparse disk, {args.big_data_mb} MB of data: push {seconds:.2f} s, peak RSS {rss / 1024:.1f} MiB"
            f"   (goal < 200 MiB)"
        )
        return 0 if rss / 1024 < 200 else 1
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
