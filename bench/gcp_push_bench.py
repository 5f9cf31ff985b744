"""`provision push gcp` of a gcp tarball to gcp-storage-emulator, against the floor of one plain
``blob.upload_from_filename`` of the same file to the same emulator; then a rerun (reuse).

The push's Compute Engine side is the tests' wire-level fake (tests/gcp/gce_fake.py). Push and
floor alternate, each after the emulator is wiped (so each sends everything), with the clients
of one process (a first run warms them and is not counted); best and median of each are compared. Goals: push <= 1.1 x floor; a rerun of the same push under 1 s.

Usage: python bench/gcp_push_bench.py [--manifest web.manifest.json] [--runs 5]
(without --manifest, examples/web.yml is built as gcp from the warm component store)
"""

from __future__ import annotations

import argparse
import os
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="gcp-bench-"))
    manifest = args.manifest
    if manifest is None:
        subprocess.run(
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
            check=True,
            stdout=subprocess.DEVNULL,
        )
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
        reuse = 0.0
        with serve_fake_gce(url, polls=0) as fake:
            push = GcpPush(PROJECT, BUCKET, sessions=scratch / "sessions")
            clients = gce_clients(fake.url, creds)
            for run in range(
                args.runs + 1
            ):  # the first run warms caches and connections: not counted
                fresh()
                started = time.perf_counter()
                client.bucket(BUCKET).blob(f"floor-{run}").upload_from_filename(str(tarball))
                floor = time.perf_counter() - started
                fresh()
                fake.images.clear()
                fake.by_request.clear()
                started = time.perf_counter()
                made = publish_gcp(artifact, push, clients, client)
                pushed = time.perf_counter() - started
                assert not made.reused and made.uploaded == tarball.stat().st_size
                started = time.perf_counter()
                again = publish_gcp(artifact, push, clients, client)
                assert again.reused
                if run:
                    floors.append(floor)
                    pushes.append(pushed)
                    reuse = max(reuse, time.perf_counter() - started)
        size = tarball.stat().st_size / 2**20
        print(f"tarball {tarball.name}: {size:.1f} MiB, {args.runs} runs each")
        print(
            f"floor (upload_from_filename): best {min(floors):.3f} s, median {statistics.median(floors):.3f} s"
        )
        print(
            f"push (upload + images.insert): best {min(pushes):.3f} s, median {statistics.median(pushes):.3f} s"
        )
        ratio = min(pushes) / min(floors)
        print(
            f"push / floor (best): {ratio:.2f} (goal <= 1.1); "
            f"median ratio {statistics.median(pushes) / statistics.median(floors):.2f}"
        )
        print(f"rerun (reuse), slowest: {reuse:.3f} s (goal < 1 s)")
        return 0 if ratio <= 1.1 and reuse < 1.0 else 1
    finally:
        emulator.terminate()
        emulator.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
