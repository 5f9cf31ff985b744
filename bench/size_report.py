"""Size of the examples as they boot: kernel + initrd of minimal.yml and web.yml, with the
initrd compressed by gzip (the default), zstd and xz, and web's size per component.

    python bench/size_report.py [--json out.json]

Each row: `provision pkg build` of the components, then `provision build --compress C`
(identical container files hard-linked, as the build does). The component table unpacks
web's gzip initrd and gives each part's bytes (a hard-linked file counts once, where it is
first met in path order) and its gzip -6 size alone (a tar of the part: an estimate of its
share of the initrd): the kernel, its modules (lib/modules), the init root (everything
else outside /containers) and each container's root. Goal: web < 20 MB with the default
gzip. Exit status 1 when over.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "boot"))

import boot_rig as rig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL_MB = 20.0
MB = 1_000_000


def part_of(rel: tuple[str, ...]) -> str:
    """The component a path of the root belongs to."""
    if rel[0] == "containers" and len(rel) > 2:
        return "/".join(rel[:3])
    if rel[:2] == ("lib", "modules"):
        return "modules (lib/modules)"
    return "init root (/ less modules, containers)"


def component_sizes(root: Path) -> dict[str, tuple[int, int]]:
    """(bytes, gzip -6 bytes of a tar of the part) per part of ``root``."""
    seen: set[int] = set()
    members: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        info = path.lstat()
        if path.is_file() and not path.is_symlink():
            if info.st_ino in seen:
                continue
            seen.add(info.st_ino)
        members.setdefault(part_of(path.relative_to(root).parts), []).append(path)
    sizes: dict[str, tuple[int, int]] = {}
    for part, paths in members.items():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in paths:
                tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
        raw = sum(p.lstat().st_size for p in paths if p.is_file() and not p.is_symlink())
        sizes[part] = (raw, len(gzip.compress(buffer.getvalue(), 6, mtime=0)))
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict[str, dict[str, float]] = {}
    components: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="size-report-") as tmp:
        for example in ("minimal", "web"):
            spec = REPO / f"examples/{example}.yml"
            for compress in ("gzip", "zstd", "xz"):
                out = Path(tmp) / f"{example}-{compress}"
                out.mkdir()
                if compress == "gzip":  # components into the store once
                    rig.build_with_provision([spec], out, example)
                # (stdout: the paths written, which this report does not print)
                subprocess.run([sys.executable, "-m", "provision", "build", "-q", "--compress",
                                compress, "-o", str(out), str(spec)], cwd=REPO, check=True,
                               stdout=subprocess.PIPE)  # fmt: skip
                kernel, initrd = out / f"{example}-kernel", out / f"{example}-initrd.img"
                k, i = kernel.stat().st_size, initrd.stat().st_size
                report[f"{example}/{compress}"] = {
                    "kernel_mb": round(k / MB, 2), "initrd_mb": round(i / MB, 2),
                    "total_mb": round((k + i) / MB, 2),
                }  # fmt: skip
                if example == "web" and compress == "gzip":
                    root = Path(tmp) / "web-root"
                    root.mkdir()
                    subprocess.run(["cpio", "-idm", "--quiet"], input=gzip.decompress(initrd.read_bytes()),
                                   cwd=root, check=True)  # fmt: skip
                    components["kernel"] = (k, k)
                    components.update(component_sizes(root))
    print(f"{'image/initrd':16s} {'kernel':>8s} {'initrd':>8s} {'total':>8s}")
    for name, row in report.items():
        print(
            f"{name:16s} {row['kernel_mb']:7.2f}M {row['initrd_mb']:7.2f}M {row['total_mb']:7.2f}M"
        )
    print(f"\n{'web, per component':44s} {'bytes':>8s} {'gzip -6':>8s}")
    for part, (raw, packed) in sorted(components.items(), key=lambda kv: -kv[1][1]):
        print(f"{part:44s} {raw / MB:7.2f}M {packed / MB:7.2f}M")
    total = report["web/gzip"]["total_mb"]
    ok = total < GOAL_MB
    print(f"\ngoal: web (gzip) < {GOAL_MB:.0f} MB: {total:.2f} MB, {'met' if ok else 'NOT met'}")
    if args.json:
        report["web_components"] = {p: {"mb": round(r / MB, 2), "gzip_mb": round(g / MB, 2)}
                                    for p, (r, g) in components.items()}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main() if os.geteuid() == 0 else "run as root (device nodes in the initrd)")
