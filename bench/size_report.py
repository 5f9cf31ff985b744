"""Size of the examples as they boot: kernel + initrd of minimal.yml and web.yml, with the
initrd compressed by gzip (the default), zstd and xz, and the largest parts of web's root.

    python bench/size_report.py [--json out.json]

Rows "provision": `provision pkg build` of the components, then `provision build
--compress C`. Rows "dedup": the same recipes assembled by tests/boot/boot_rig.py with
identical files hard-linked (every container carries its own busybox; a cpio stores a
hard-linked file once) — what the build would give with that optimisation. Goal: web
< 25 MB with the default gzip (LinuxKit's headline for a base system is about 35 MB).
Exit status 1 when over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "boot"))

import boot_rig as rig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL_MB = 25.0
MB = 1_000_000


def root_parts(root: Path) -> dict[str, int]:
    """Bytes per top part of the root, hard links counted once."""
    seen: set[int] = set()
    parts: dict[str, int] = {}
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        info = path.stat()
        if info.st_ino in seen:
            continue
        seen.add(info.st_ino)
        rel = path.relative_to(root).parts
        key = "/".join(rel[:3]) if rel[0] == "containers" else "/".join(rel[:2])
        if rel[0] == "lib" and len(rel) > 1 and rel[1] == "modules":
            key = "lib/modules"
        parts[key] = parts.get(key, 0) + info.st_size
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="size-report-") as tmp:
        for example in ("minimal", "web"):
            spec = REPO / f"examples/{example}.yml"
            for compress in ("gzip", "zstd", "xz"):
                out = Path(tmp) / f"{example}-{compress}"
                out.mkdir()
                if compress == "gzip":  # components into the store once
                    rig.build_with_provision([spec], out, example)
                subprocess.run([sys.executable, "-m", "provision", "build", "-q", "--compress",
                                compress, "-o", str(out), str(spec)], cwd=REPO, check=True)  # fmt: skip
                kernel, initrd = out / f"{example}-kernel", out / f"{example}-initrd.img"
                k, i = kernel.stat().st_size, initrd.stat().st_size
                report[f"{example}/provision/{compress}"] = {
                    "kernel_mb": round(k / MB, 2), "initrd_mb": round(i / MB, 2),
                    "total_mb": round((k + i) / MB, 2),
                }  # fmt: skip
                out = Path(tmp) / f"{example}-{compress}-dedup"
                out.mkdir()
                kernel, initrd, _ = rig.build_image([spec], out, compress)
                k, i = kernel.stat().st_size, initrd.stat().st_size
                report[f"{example}/dedup/{compress}"] = {
                    "kernel_mb": round(k / MB, 2), "initrd_mb": round(i / MB, 2),
                    "total_mb": round((k + i) / MB, 2),
                }  # fmt: skip
                if example == "web" and compress == "gzip":
                    parts = root_parts(out / "rootfs")
        print(f"{'image/how/initrd':24s} {'kernel':>8s} {'initrd':>8s} {'total':>8s}")
        for name, row in report.items():
            print(f"{name:24s} {row['kernel_mb']:7.2f}M {row['initrd_mb']:7.2f}M {row['total_mb']:7.2f}M")
        print("\nweb root, uncompressed, largest parts (a hard-linked file counts once):")
        for key, size in sorted(parts.items(), key=lambda kv: -kv[1])[:10]:
            print(f"  {size / MB:6.2f}M  {key}")
    total = report["web/provision/gzip"]["total_mb"]
    ok = total < GOAL_MB
    print(f"\ngoal: web (gzip) < {GOAL_MB:.0f} MB: {total:.2f} MB, {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main() if os.geteuid() == 0 else "run as root (device nodes in the initrd)")
