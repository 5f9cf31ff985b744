"""Azure page-blob upload of the web image's fixed VHD (1 GiB, mostly empty) to Azurite:
provision's upload (holes never read, all-zero 4 MiB pages never sent, 8 pages at once) side by
side with the plain SDK call that hands the whole file to ``upload_blob(blob_type=PageBlob)``
(what LinuxKit's push does), alternating, best of each; and the bytes each sent against the
VHD's allocated bytes. Goal: provision <= 0.5 x the plain call's time.

Usage: python bench/azure_upload.py [--vhd FILE --digest sha256:...] [--runs 3]
Without --vhd it builds examples/web.yml -f vhd --size 1G from the warm component store
(``provision pkg build --all``). Azurite comes from the cache tests/azure_cloud uses
(scripts/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "azure_cloud")]  # the tests' Azurite kit

from azure.core.pipeline import PipelineRequest  # noqa: E402
from azure.storage.blob import BlobServiceClient, BlobType  # noqa: E402
from azurite_testkit import ACCOUNT, KEY, azurite_command, azurite_dir  # noqa: E402

from provision.providers.azure.blob import read_fixed_vhd, upload_vhd  # noqa: E402


class CountBodies:
    """Counts the request body bytes the client sends (storage's ``raw_request_hook``)."""

    def __init__(self) -> None:
        self.sent = 0
        self.lock = threading.Lock()

    def __call__(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
        size = int(request.http_request.headers.get("Content-Length", 0) or 0)
        with self.lock:
            self.sent += size


def start_azurite(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    program = azurite_dir() / "node_modules" / ".bin" / "azurite-blob"
    if not program.exists():
        sys.exit(f"{program} is missing: run scripts/setup.sh (npm install azurite@3.35.0)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    process = subprocess.Popen(
        azurite_command(program, port),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    sys.exit("azurite did not start")


def build_web_vhd(out: Path) -> tuple[Path, str]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "provision",
            "build",
            "-f",
            "vhd",
            "--size",
            "1G",
            "--pull",
            "never",
            "-o",
            str(out),
            str(ROOT / "examples" / "web.yml"),
        ],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
    )
    manifest = json.loads((out / "web.manifest.json").read_text())
    return out / "web.vhd", str(manifest["image_digest"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vhd", type=Path)
    parser.add_argument("--digest", default="sha256:" + "0" * 64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="azure-bench-") as tmp:
        work = Path(tmp)
        vhd_path, digest = (args.vhd, args.digest) if args.vhd else build_web_vhd(work / "out")
        vhd = read_fixed_vhd(vhd_path.resolve())
        allocated = os.stat(vhd.path).st_blocks * 512
        process, port = start_azurite(work)
        try:
            counter = CountBodies()
            service = BlobServiceClient(
                f"http://127.0.0.1:{port}/{ACCOUNT}",
                credential={"account_name": ACCOUNT, "account_key": KEY},
                raw_request_hook=counter,
            )
            ours: list[float] = []
            plain: list[float] = []
            sent: dict[str, int] = {}
            for run in range(args.runs):
                container = service.get_container_client(f"run{run}")
                container.create_container()
                counter.sent = 0
                started = time.perf_counter()
                upload_vhd(container, vhd, digest, workers=8)
                ours.append(time.perf_counter() - started)
                sent["provision"] = counter.sent
                counter.sent = 0
                started = time.perf_counter()
                with open(vhd.path, "rb") as f:
                    container.get_blob_client("plain.vhd").upload_blob(
                        f, blob_type=BlobType.PAGEBLOB, length=vhd.size, max_concurrency=8
                    )
                plain.append(time.perf_counter() - started)
                sent["plain"] = counter.sent
        finally:
            process.terminate()
            process.wait(timeout=10)
    mib = 1024 * 1024
    best_ours, best_plain = min(ours), min(plain)
    print(f"VHD {vhd.path.name}: {vhd.size / mib:.0f} MiB, {allocated / mib:.1f} MiB allocated")
    print(
        f"provision upload_vhd (8 workers): best {best_ours:.2f} s of {[round(t, 2) for t in ours]}, "
        f"sent {sent['provision'] / mib:.1f} MiB"
    )
    print(
        f"plain upload_blob(PageBlob, max_concurrency=8): best {best_plain:.2f} s of "
        f"{[round(t, 2) for t in plain]}, sent {sent['plain'] / mib:.1f} MiB"
    )
    ratio = best_ours / best_plain
    print(
        f"ratio {ratio:.3f} (goal <= 0.5); bytes sent / allocated: provision "
        f"{sent['provision'] / max(1, allocated):.2f}, plain {sent['plain'] / max(1, allocated):.2f}"
    )
    return 0 if ratio <= 0.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
