"""Build memory: building a ~1 GiB root filesystem keeps peak RSS under 200 MiB.

    python bench/build_memory.py [--size-mb 1024] [--formats kernel+initrd,tar]

Synthetic images (random and compressible data, several layers) are written to a temporary
store; the build then runs in a fresh subprocess that reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) next to the RSS of the same interpreter after
importing provision but before building.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_speed import make_images  # noqa: E402

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/bench")
from provision.build import build_image
from provision.oci.store import ImageStore
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
result = build_image([sys.argv[2]], store=ImageStore(sys.argv[3]), formats=sys.argv[5],
                     outdir=sys.argv[4], pull="never")
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sizes = {p.name: p.stat().st_size for p in result.outputs}
print(json.dumps({"baseline_kib": baseline, "peak_kib": peak, "seconds": elapsed,
                  "outputs": sizes}))
"""

LIMIT_MIB = 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1074, help="root size (1 GiB = 1074 MB)")
    parser.add_argument("--formats", default="kernel+initrd,tar")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="provision-bench-mem-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        spec = make_images(
            work / "store", work, args.size_mb, file_size=(10_000, 8_000_000), compression="zstd"
        )
        print(
            f"generated {args.size_mb} MB of images in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                str(ROOT),
                spec,
                str(work / "store"),
                str(work / "out"),
                args.formats,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        report = json.loads(out.stdout.strip().splitlines()[-1])
    peak = report["peak_kib"] / 1024
    baseline = report["baseline_kib"] / 1024
    print(
        f"{'root':>10} {'formats':<20} {'build s':>8} {'RSS before':>11} {'peak RSS':>9} "
        f"{'limit':>7}"
    )
    print(
        f"{args.size_mb:>8}MB {args.formats:<20} {report['seconds']:>8.1f} "
        f"{baseline:>9.1f}Mi {peak:>7.1f}Mi {LIMIT_MIB:>5}Mi  "
        f"{'ok' if peak < LIMIT_MIB else 'OVER'} ({peak / LIMIT_MIB:.2f}x of the limit)"
    )
    for name, size in sorted(report["outputs"].items()):
        print(f"  {name}: {size / 2**20:.1f} MiB")
    return 0 if peak < LIMIT_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
