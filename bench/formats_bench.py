"""Benchmark of the format writers.

1. ``--mode web`` (the default when examples/web.yml's components are in the image store):
   time to write ALL formats of examples/web.yml from a warm cache (images in the store, one
   untimed build first): the whole ``provision build`` (library call) and each of its stages
   (resolve + assemble, kernel + initrd, rootfs tar, each format, publish + manifest), the
   median of ``--repeat`` builds.
   ``--mode tiny`` (the default otherwise): each format alone, from the tests' tiny inputs
   (host kernel, busybox initrd) or ``--kernel/--initrd/--rootfs-tar``.
2. The raw-disk conversion steps, side by side with plain ``qemu-img convert`` of the same raw
   disk (web.yml's ``aws`` disk in web mode): qcow2 and vmdk (qemu-img + our normalisation),
   fixed and dynamic VHD (pure Python here), printed as ratios (ours / qemu-img; below 1 is
   faster).

Usage: python bench/formats_bench.py [--mode auto|web|tiny] [--store DIR] [--spec FILE]
       [--kernel K --initrd I --rootfs-tar T] [--repeat N]
The store is ``--store``, else ``$PROVISION_CACHE`` / ``~/.cache/provision/oci``, else the boot
tests' ``/var/tmp/provision-e2e-oci`` (build the components with ``provision pkg build --all``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from provision.build import build_image
from provision.builders.base import BootInputs, FormatOptions, derive_hex32, derive_uuid
from provision.builders.disk import write_qemu_img, write_raw_disk
from provision.builders.formats import FORMATS
from provision.builders.vhd import write_dynamic_vhd, write_fixed_vhd
from provision.builders.vmdk import write_vmdk
from provision.errors import ProvisionError
from provision.oci.store import ImageStore

REPO = Path(__file__).resolve().parent.parent
WEB_SPEC = REPO / "examples" / "web.yml"
E2E_STORE = Path(os.environ.get("PROVISION_E2E_CACHE", "/var/tmp/provision-e2e-oci"))
FORMATS_BENCHED = [
    "iso-bios",
    "iso-efi",
    "iso-efi-initrd",
    "raw-bios",
    "raw-efi",
    "qcow2-bios",
    "qcow2-efi",
    "vhd",
    "dynamic-vhd",
    "vmdk",
    "gcp",
    "aws",
    "kernel+squashfs",
    "kernel+erofs",
]


def default_inputs(work: Path) -> BootInputs:
    sys.path[:0] = [str(REPO / "tests" / "formats"), str(REPO / "tests")]
    testkit = importlib.import_module(
        "formats_testkit"
    )  # the tests' tiny inputs: host kernel + busybox initrd

    kernel = testkit.find_kernel()
    (work / "kernel").write_bytes(kernel.read_bytes())
    testkit.write_test_initrd(work / "initrd.img", kernel)
    testkit.write_test_rootfs(work / "rootfs.tar")
    return BootInputs(
        work / "kernel",
        work / "initrd.img",
        testkit.CMDLINE,
        work / "rootfs.tar",
        testkit.DIGEST,
        testkit.EPOCH,
        "bench",
    )


def timed(
    fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None
) -> float:
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


# --- web mode: all formats of examples/web.yml in one build ----------------------------------


def find_web_store(asked: Path | None, spec: Path) -> ImageStore | None:
    """The first store holding every image ``spec`` names (None: components not built)."""
    from provision.image_digest import ComponentsMissingError, plan_image_digest

    candidates = [ImageStore(asked)] if asked else [ImageStore.default(), ImageStore(E2E_STORE)]
    for store in candidates:
        try:
            plan_image_digest([spec], store)
        except (ComponentsMissingError, ProvisionError):
            continue
        return store
    return None


def stage_of(message: str) -> str | None:
    """The stage a build progress message starts (None: the stage goes on)."""
    if message.startswith("resolve"):
        return "resolve + assemble"
    if message == "write kernel":
        return "kernel + initrd"
    if message == "write rootfs tar":
        return "rootfs tar"
    if message.startswith("format "):
        return message.removeprefix("format ")
    if message.startswith("wrote "):
        return "publish + manifest"
    return None


def build_web_once(
    store: ImageStore, spec: Path, out: Path, options: FormatOptions
) -> dict[str, float]:
    """One build of every format; seconds per stage, and "all formats" for the whole call."""
    marks: list[tuple[float, str]] = []

    def progress(message: str) -> None:
        stage = stage_of(message)
        if stage is not None and (not marks or marks[-1][1] != stage):
            marks.append((time.perf_counter(), stage))

    start = time.perf_counter()
    build_image(
        [spec],
        store=store,
        formats=FORMATS_BENCHED,
        outdir=out,
        pull="never",
        size=options.size,
        progress=progress,
    )
    end = time.perf_counter()
    stages: dict[str, float] = {}
    for (at, stage), (until, _next) in zip(marks, [*marks[1:], (end, "")], strict=True):
        stages[stage] = stages.get(stage, 0.0) + until - at
    stages["all formats"] = end - start
    return stages


def bench_web(
    store: ImageStore, spec: Path, work: Path, repeat: int, options: FormatOptions
) -> tuple[Path, str, int]:
    """Print the stage times of building every format of ``spec``; return the raw (aws) disk,
    the image digest and the epoch of the last build."""
    out = work / "web-0"
    build_web_once(store, spec, out, options)  # warm: page cache, lazily imported modules
    runs = []
    for index in range(1, repeat + 1):
        out = work / f"web-{index}"
        runs.append(build_web_once(store, spec, out, options))
    manifest = json.loads(next(out.glob("*.manifest.json")).read_text())
    sizes = {e["format"]: 0 for e in manifest["outputs"]}
    for entry in manifest["outputs"]:
        sizes[entry["format"]] += entry["size"]
    print(
        f"{spec.name}: all {len(FORMATS_BENCHED)} formats in one build from a warm cache "
        f"(store {store.root}), median of {repeat}"
    )
    print(f"{'stage':<20}{'seconds':>9}{'MiB':>9}")
    for stage in runs[0]:
        seconds = statistics.median(run.get(stage, 0.0) for run in runs)
        size = f"{sizes[stage] / 2**20:>9.1f}" if stage in sizes else ""
        print(f"{stage:<20}{seconds:>9.3f}{size}")
    print(f"{'total MiB written':<29}{sum(sizes.values()) / 2**20:>9.1f}")
    raw = next(p for p in out.iterdir() if p.name.endswith(".raw"))
    return raw, str(manifest["image_digest"]), int(manifest["source_date_epoch"])


# --- tiny mode: each format alone -------------------------------------------------------------


def bench_tiny(inputs: BootInputs, work: Path, repeat: int, options: FormatOptions) -> Path:
    """Print the time of each format written alone; return a raw hybrid disk of ``inputs``."""
    formats = [f for f in FORMATS_BENCHED if inputs.rootfs_tar or not f.startswith("kernel+")]
    print(f"{'format':<18}{'seconds':>9}{'MiB':>9}")
    total = 0.0
    for fmt in formats:
        counter = iter(range(10**6))

        def write(fmt: str = fmt, counter: object = counter) -> None:
            dest = work / "out" / fmt / str(next(counter))  # type: ignore[call-overload]
            dest.mkdir(parents=True)
            FORMATS[fmt].write(inputs, dest, options)

        seconds = timed(write, repeat)
        total += seconds
        size = sum(p.stat().st_size for p in (work / "out" / fmt / "0").iterdir())
        print(f"{fmt:<18}{seconds:>9.3f}{size / 2**20:>9.1f}")
    print(f"{'all formats':<18}{total:>9.3f}")
    raw = work / "disk.raw"
    write_raw_disk(inputs, raw, options, "hybrid")
    return raw


# --- the conversion steps vs qemu-img -----------------------------------------------------------


def bench_conversions(raw: Path, digest: str, epoch: int, work: Path, repeat: int) -> None:
    print(
        f"\nraw disk {raw.stat().st_size / 2**20:.0f} MiB; conversion steps (median of {repeat}):"
    )
    print(f"{'step':<14}{'provision':>11}{'qemu-img':>10}{'ratio':>8}")
    uid = derive_uuid(digest, "vhd")
    cid = derive_hex32(digest, "vmdk-cid")
    copy = work / "vhd-src.raw"

    def copy_raw() -> None:  # our VHD step consumes its raw disk: give it a fresh copy, untimed
        subprocess.run(["cp", "--sparse=always", str(raw), str(copy)], check=True)

    def vhd_ours(dynamic: bool) -> None:
        (write_dynamic_vhd if dynamic else write_fixed_vhd)(copy, work / "o.vhd", uid, epoch)

    steps: list[tuple[str, Callable[[], None], Callable[[], None], Callable[[], None] | None]] = [
        (
            "raw->qcow2",
            lambda: write_qemu_img(raw, work / "o.qcow2", "qcow2"),
            lambda: qemu_convert(raw, work / "q.qcow2", "qcow2", None),
            None,
        ),
        (
            "raw->vmdk",
            lambda: write_vmdk(raw, work / "o.vmdk", cid=cid),
            lambda: qemu_convert(raw, work / "q.vmdk", "vmdk", "subformat=streamOptimized"),
            None,
        ),
        (
            "raw->vhd",
            lambda: vhd_ours(False),
            lambda: qemu_convert(raw, work / "q.vhd", "vpc", "subformat=fixed,force_size"),
            copy_raw,
        ),
        (
            "raw->dyn-vhd",
            lambda: vhd_ours(True),
            lambda: qemu_convert(raw, work / "q.vhd", "vpc", "subformat=dynamic,force_size"),
            copy_raw,
        ),
    ]
    for name, ours, theirs, setup in steps:
        a = timed(ours, repeat, setup)
        b = timed(theirs, repeat)
        print(f"{name:<14}{a:>11.3f}{b:>10.3f}{a / b:>8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("auto", "web", "tiny"), default="auto")
    parser.add_argument("--store", type=Path, help="image store holding the components (web mode)")
    parser.add_argument("--spec", type=Path, default=WEB_SPEC, help="image spec of web mode")
    parser.add_argument("--kernel", type=Path)
    parser.add_argument("--initrd", type=Path)
    parser.add_argument("--rootfs-tar", type=Path)
    parser.add_argument("--cmdline", default="console=ttyS0")
    parser.add_argument("--size", type=int, default=None, help="disk size in MiB (default: fit)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    options = FormatOptions(size=args.size * 1024 * 1024 if args.size else None)
    store = None
    if args.mode != "tiny" and not (args.kernel and args.initrd):
        store = find_web_store(args.store, args.spec)
        if store is None and args.mode == "web":
            print(
                f"the components of {args.spec} are not in the store: provision pkg build --all",
                file=sys.stderr,
            )
            return 1
    with tempfile.TemporaryDirectory(prefix="formats-bench-") as tmp:
        work = Path(tmp)
        if store is not None:
            raw, digest, epoch = bench_web(store, args.spec, work, args.repeat, options)
        else:
            if args.kernel and args.initrd:
                inputs = BootInputs(
                    args.kernel,
                    args.initrd,
                    args.cmdline,
                    args.rootfs_tar,
                    "sha256:" + "0" * 64,
                    1700000000,
                    "bench",
                )
            else:
                inputs = default_inputs(work)
            raw = bench_tiny(inputs, work, args.repeat, options)
            digest, epoch = inputs.digest, inputs.source_date_epoch
        bench_conversions(raw, digest, epoch, work, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
