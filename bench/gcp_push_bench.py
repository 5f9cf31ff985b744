"""`provision push gcp` of a gcp tarball to gcp-storage-emulator, against the floor of one plain
``blob.upload_from_filename`` of the same file to the same emulator; then a rerun (reuse).

The push's Compute Engine side is the tests' wire-level fake (tests/gcp/gce_fake.py; its
operations are DONE when returned unless --polls N). Both sides send the same file with the
clients of one process, each after the emulator is wiped (so each sends everything) and a
garbage collection; they alternate, and which goes first alternates too. A first pair warms the
clients and connections and is not counted. Every run is printed; the goal is on the medians:
push <= 1.1 x floor; a rerun of the same push (reuse) under 1 s.

Then the command as users run it in CI: ``provision push gcp MANIFEST --project P --bucket B``
in a subprocess, from its start to its exit, the image being there (reuse), 5 times (goal: the
median under 1 s); and once more under ``python -X importtime``, its imports summed by top-level
module (the largest printed), checked to include no google.cloud.compute_v1.

Usage: python bench/gcp_push_bench.py [--manifest web.manifest.json] [--runs 5]
(without --manifest, examples/web.yml is built as gcp from the warm component store)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from gcp.gce_fake import serve_fake_gce  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402

from provision.providers.gcp.clients import gce_clients  # noqa: E402
from provision.providers.gcp.publish import GcpPush, publish_gcp, storage_client  # noqa: E402
from provision.target import read_artifact  # noqa: E402

BUCKET = "bench-images"
PROJECT = "provision-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def command_rerun(
    manifest: Path, endpoint: str, cache: Path, *, importtime: bool = False
) -> tuple[float, str]:
    """``provision push gcp`` of ``manifest`` in a subprocess: its wall time and its stderr."""
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "provision"]
    argv += ["push", "gcp", str(manifest), "--project", PROJECT, "--bucket", BUCKET]
    argv += ["--endpoint", endpoint, "--anonymous", "--json"]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    took = time.perf_counter() - started
    if done.returncode or not json.loads(done.stdout)["reused"]:
        raise SystemExit(f"provision push gcp failed or did not reuse:\n{done.stderr[-3000:]}")
    return took, done.stderr


def import_breakdown(stderr: str) -> dict[str, float]:
    """Seconds spent importing each distribution's modules (their own time, children apart),
    from ``-X importtime``'s report: ``google.cloud.storage``, ``google.api_core``, ``requests``,
    ``provision``, ..."""
    by_package: dict[str, float] = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \| *(\S+)", line)
        if match:
            parts = match.group(2).split(".")
            depth = 3 if parts[:2] == ["google", "cloud"] else 2 if parts[0] == "google" else 1
            package = ".".join(parts[:depth])
            by_package[package] = by_package.get(package, 0.0) + int(match.group(1)) / 1e6
    return by_package


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument(
        "--polls", type=int, default=0, help="wait calls before an operation is DONE"
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="gcp-bench-"))
    manifest = args.manifest
    if manifest is None:
        built = subprocess.run(
            [
                sys.executable,
                "-m",
                "provision",
                "build",
                "-f",
                "gcp",
                str(ROOT / "examples" / "web.yml"),
                "-o",
                str(scratch / "out"),
            ],
            capture_output=True,
            text=True,
        )
        if built.returncode:
            sys.stderr.write(built.stdout + built.stderr)
            return built.returncode
        manifest = scratch / "out" / "web.manifest.json"
    artifact = read_artifact(manifest, "gcp")
    tarball = artifact.files[0]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gcp-storage-emulator")),
            "start",
            "-H",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ["STORAGE_EMULATOR_HOST"] = url
    creds = AnonymousCredentials()  # type: ignore[no-untyped-call]
    try:
        for _ in range(100):
            try:
                requests.get(f"{url}/storage/v1/b", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        client = storage_client(PROJECT, creds)

        def fresh() -> None:
            requests.get(f"{url}/wipe", timeout=10).raise_for_status()
            client.create_bucket(BUCKET)

        floors: list[float] = []
        pushes: list[float] = []
        reuses: list[float] = []
        size = tarball.stat().st_size
        with serve_fake_gce(url, polls=args.polls) as fake:
            push = GcpPush(PROJECT, BUCKET, sessions=scratch / "sessions")
            clients = gce_clients(fake.url, creds)

            def floor(run: int) -> float:
                fresh()
                gc.collect()
                started = time.perf_counter()
                client.bucket(BUCKET).blob(f"floor-{run}").upload_from_filename(str(tarball))
                return time.perf_counter() - started

            def pushed() -> float:
                fresh()
                fake.images.clear()
                fake.by_request.clear()
                gc.collect()
                started = time.perf_counter()
                made = publish_gcp(artifact, push, clients, client)
                took = time.perf_counter() - started
                assert not made.reused and made.uploaded == size
                return took

            def reused() -> float:
                started = time.perf_counter()
                again = publish_gcp(artifact, push, clients, client)
                took = time.perf_counter() - started
                assert again.reused and again.uploaded == 0
                return took

            print(f"tarball {tarball.name}: {size / 2**20:.1f} MiB; load {os.getloadavg()[0]:.2f}")
            for run in range(args.runs + 1):  # run 0 warms the clients: not counted
                if run % 2:
                    f, p = floor(run), pushed()
                else:
                    p, f = pushed(), floor(run)
                r = reused()
                if run:
                    floors.append(f)
                    pushes.append(p)
                    reuses.append(r)
                    first = "floor" if run % 2 else "push"
                    print(
                        f"run {run} ({first} first): floor {f * 1000:.1f} ms, push {p * 1000:.1f} ms "
                        f"({p / f:.2f} x), rerun {r * 1000:.1f} ms"
                    )
            commands = [command_rerun(manifest, fake.url, scratch / "cache")[0] for _ in range(5)]
            _, report = command_rerun(manifest, fake.url, scratch / "cache", importtime=True)
        ratio = statistics.median(pushes) / statistics.median(floors)
        print(
            f"floor (upload_from_filename): median {statistics.median(floors) * 1000:.1f} ms, "
            f"best {min(floors) * 1000:.1f} ms"
        )
        print(
            f"push (upload + images.insert): median {statistics.median(pushes) * 1000:.1f} ms, "
            f"best {min(pushes) * 1000:.1f} ms"
        )
        print(
            f"push / floor: median {ratio:.2f} (goal <= 1.1); best {min(pushes) / min(floors):.2f}; "
            f"median of the runs' ratios {statistics.median(p / f for p, f in zip(pushes, floors, strict=True)):.2f}"
        )
        print(
            f"rerun (reuse): median {statistics.median(reuses) * 1000:.1f} ms, slowest {max(reuses) * 1000:.1f} ms (goal < 1 s)"
        )
        print(
            "provision push gcp rerun (the command, a subprocess): "
            + ", ".join(f"{c * 1000:.0f}" for c in commands)
            + f" ms; median {statistics.median(commands) * 1000:.0f} ms (goal < 1 s)"
        )
        breakdown = import_breakdown(report)
        print(
            f"its imports (-X importtime): {sum(breakdown.values()) * 1000:.0f} ms; "
            + ", ".join(
                f"{name} {took * 1000:.0f}"
                for name, took in sorted(breakdown.items(), key=lambda kv: -kv[1])[:10]
            )
        )
        compute = "google.cloud.compute_v1" in report
        print(f"google.cloud.compute_v1 imported: {compute}")
        print(f"load {os.getloadavg()[0]:.2f}")
        ok = ratio <= 1.1 and max(reuses) < 1.0
        return 0 if ok and statistics.median(commands) < 1.0 and not compute else 1
    finally:
        emulator.terminate()
        emulator.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
