"""Benchmark of the format writers.

1. Time to write every disk / ISO format from the same inputs (kernel, initrd, rootfs tar).
2. The raw-disk conversion steps, side by side with plain ``qemu-img convert`` of the same raw
   disk: qcow2 and vmdk (qemu-img + our normalisation), fixed and dynamic VHD (pure Python
   here), printed as ratios (ours / qemu-img; below 1 is faster).

Usage: python bench/formats_bench.py [--kernel K --initrd I --rootfs-tar T] [--repeat N]
Without inputs it uses the host's Debian cloud kernel and a busybox initrd (as the tests do).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from provision.builders.base import BootInputs, FormatOptions, derive_hex32, derive_uuid
from provision.builders.disk import write_qemu_img, write_raw_disk
from provision.builders.formats import FORMATS
from provision.builders.vhd import write_dynamic_vhd, write_fixed_vhd
from provision.builders.vmdk import write_vmdk

FORMATS_BENCHED = [
    "iso-bios", "iso-efi", "iso-efi-initrd", "raw-bios", "raw-efi", "qcow2-bios", "qcow2-efi", "vhd",
    "dynamic-vhd", "vmdk", "gcp", "aws", "kernel+squashfs", "kernel+erofs",
]


def default_inputs(work: Path) -> BootInputs:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "formats"))
    import conftest  # the tests' tiny inputs: host kernel + busybox initrd

    kernel = conftest.find_kernel()
    (work / "kernel").write_bytes(kernel.read_bytes())
    conftest.write_test_initrd(work / "initrd.img", kernel)
    conftest.write_test_rootfs(work / "rootfs.tar")
    return BootInputs(
        work / "kernel", work / "initrd.img", conftest.CMDLINE, work / "rootfs.tar",
        conftest.DIGEST, conftest.EPOCH, "bench",
    )


def timed(fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None) -> float:
    """Median wall time of ``repeat`` runs (``setup`` runs before each, untimed)."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def qemu_convert(raw: Path, out: Path, fmt: str, opts: str | None) -> None:
    argv = ["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt] + (["-o", opts] if opts else [])
    subprocess.run([*argv, str(raw), str(out)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", type=Path)
    parser.add_argument("--initrd", type=Path)
    parser.add_argument("--rootfs-tar", type=Path)
    parser.add_argument("--cmdline", default="console=ttyS0")
    parser.add_argument("--size", type=int, default=None, help="disk size in MiB (default: fit)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    options = FormatOptions(size=args.size * 1024 * 1024 if args.size else None)
    with tempfile.TemporaryDirectory(prefix="formats-bench-") as tmp:
        work = Path(tmp)
        if args.kernel and args.initrd:
            inputs = BootInputs(args.kernel, args.initrd, args.cmdline, args.rootfs_tar, "sha256:" + "0" * 64, 1700000000, "bench")
        else:
            inputs = default_inputs(work)
        formats = [f for f in FORMATS_BENCHED if inputs.rootfs_tar or not f.startswith("kernel+")]

        print(f"{'format':<18}{'seconds':>9}{'MiB':>9}")
        total = 0.0
        for fmt in formats:
            counter = iter(range(10**6))

            def write(fmt: str = fmt, counter: object = counter) -> None:
                dest = work / "out" / fmt / str(next(counter))  # type: ignore[call-overload]
                dest.mkdir(parents=True)
                FORMATS[fmt].write(inputs, dest, options)

            seconds = timed(write, args.repeat)
            total += seconds
            size = sum(p.stat().st_size for p in (work / "out" / fmt / "0").iterdir())
            print(f"{fmt:<18}{seconds:>9.3f}{size / 2**20:>9.1f}")
        print(f"{'all formats':<18}{total:>9.3f}")

        raw = work / "disk.raw"
        write_raw_disk(inputs, raw, options, "hybrid")
        print(f"\nraw disk {raw.stat().st_size / 2**20:.0f} MiB; conversion steps (median of {args.repeat}):")
        print(f"{'step':<14}{'provision':>11}{'qemu-img':>10}{'ratio':>8}")
        uid = derive_uuid(inputs.digest, "vhd")
        cid = derive_hex32(inputs.digest, "vmdk-cid")

        copy = work / "vhd-src.raw"

        def copy_raw() -> None:  # our VHD step consumes its raw disk: give it a fresh copy, untimed
            subprocess.run(["cp", "--sparse=always", str(raw), str(copy)], check=True)

        def vhd_ours(dynamic: bool) -> None:
            (write_dynamic_vhd if dynamic else write_fixed_vhd)(copy, work / "o.vhd", uid, inputs.source_date_epoch)

        steps: list[tuple[str, Callable[[], None], Callable[[], None], Callable[[], None] | None]] = [
            ("raw->qcow2", lambda: write_qemu_img(raw, work / "o.qcow2", "qcow2"),
             lambda: qemu_convert(raw, work / "q.qcow2", "qcow2", None), None),
            ("raw->vmdk", lambda: write_vmdk(raw, work / "o.vmdk", cid=cid),
             lambda: qemu_convert(raw, work / "q.vmdk", "vmdk", "subformat=streamOptimized"), None),
            ("raw->vhd", lambda: vhd_ours(False),
             lambda: qemu_convert(raw, work / "q.vhd", "vpc", "subformat=fixed,force_size"), copy_raw),
            ("raw->dyn-vhd", lambda: vhd_ours(True),
             lambda: qemu_convert(raw, work / "q.vhd", "vpc", "subformat=dynamic,force_size"), copy_raw),
        ]
        for name, ours, theirs, setup in steps:
            a = timed(ours, args.repeat, setup)
            b = timed(theirs, args.repeat)
            print(f"{name:<14}{a:>11.3f}{b:>10.3f}{a / b:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
