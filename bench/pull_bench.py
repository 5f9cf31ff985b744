"""Pull speed: provision against ``skopeo copy`` of the same image from the same loopback
registry, side by side in one run.

    python bench/pull_bench.py [--layers 8] [--layer-mb 4] [--runs 5] [--parallel 4]

A multi-layer image (``--layers`` layers of ``--layer-mb`` MB of random data, gzip layers) is
written into a temporary store and pushed to Debian's ``docker-registry`` started on
127.0.0.1. Then, alternately (so machine load hits both alike), each run pulls it into an
empty destination with

- ``provision cache --cache DIR pull REF`` (a new process, as a user runs it),
- ``skopeo copy docker://REF oci:DIR:bench`` (a new process; the same OCI layout result),
- the library call ``RegistryClient().pull`` in this process (no interpreter start-up),
- ``provision cache ls`` of an empty cache: the command's start-up alone, for reference,

and prints the median of each and the ratios to skopeo (below 1.0 is faster). Goal: the
command's ratio at most 1.0x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "oci")]

from oci_testkit import make_layered_image, start_registry, stop  # noqa: E402

from provision.oci.config import RegistryConfig  # noqa: E402
from provision.oci.registry import RegistryClient  # noqa: E402
from provision.oci.store import ImageStore  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--layer-mb", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=4, help="provision's blobs at once")
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            print(f"pull_bench: {tool} is not installed (see scripts/setup.sh)", file=sys.stderr)
            return 1
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory(prefix="pull-bench-") as tmp:
        work = Path(tmp)
        registry = start_registry(work / "registry")
        try:
            source = ImageStore(work / "source")
            image = make_layered_image(
                source,
                "bench:1",
                args.layers,
                int(args.layer_mb * 1e6),
                seed=1,
                compression="gzip",
            )
            ref = f"{registry.host}/bench/app:1"
            RegistryClient(config=RegistryConfig()).push(source, "bench:1", ref)
            size = sum(d.size for d in image.layers)
            print(
                f"image: {args.layers} layers, {size / 1e6:.1f} MB (gzip), "
                f"registry {registry.host}; {args.runs} runs each, alternating"
            )

            def provision_command(n: int) -> None:
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "provision",
                        "cache",
                        "--cache",
                        str(work / f"cli-{n}"),
                        "pull",
                        "-q",
                        "-j",
                        str(args.parallel),
                        ref,
                    ],
                    check=True,
                    env=env,
                    stdout=subprocess.DEVNULL,
                )

            def skopeo(n: int) -> None:
                subprocess.run(
                    [
                        "skopeo",
                        "--insecure-policy",
                        "copy",
                        "--quiet",
                        "--src-tls-verify=false",
                        f"docker://{ref}",
                        f"oci:{work / f'skopeo-{n}'}:bench",
                    ],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )

            def library(n: int) -> None:
                client = RegistryClient(config=RegistryConfig(), parallel=args.parallel)
                client.pull(ImageStore(work / f"lib-{n}"), ref)

            def startup(_n: int) -> None:
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "provision",
                        "cache",
                        "--cache",
                        str(work / "none"),
                        "ls",
                    ],
                    check=True,
                    env=env,
                    stdout=subprocess.DEVNULL,
                )

            runners = {
                "provision cache pull": provision_command,
                "skopeo copy": skopeo,
                "library pull": library,
                "provision start-up": startup,
            }
            times: dict[str, list[float]] = {name: [] for name in runners}
            for n in range(args.runs + 1):
                order = list(runners) if n % 2 == 0 else list(reversed(runners))
                for name in order:
                    start = time.perf_counter()
                    runners[name](n)
                    elapsed = time.perf_counter() - start
                    if n:  # the first round warms page caches and is not counted
                        times[name].append(elapsed)
                for leftover in work.glob(f"*-{n}"):
                    shutil.rmtree(leftover)
        finally:
            stop(registry)
    floor = statistics.median(times["skopeo copy"])
    for name, samples in times.items():
        median = statistics.median(samples)
        rate = f"{size / 1e6 / median:6.1f} MB/s" if name != "provision start-up" else " " * 11
        print(
            f"{name:<22} median {median:6.3f} s  {rate}  "
            f"ratio to skopeo {median / floor:4.2f}x  "
            f"(runs: {', '.join(f'{s:.3f}' for s in samples)})"
        )
    ratio = statistics.median(times["provision cache pull"]) / floor
    print(f"goal: provision cache pull <= 1.0x skopeo copy: {'met' if ratio <= 1.0 else 'NOT met'}")
    return 0 if ratio <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
