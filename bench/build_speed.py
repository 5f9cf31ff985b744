"""Build speed: a warm-cache kernel+initrd build of a ~60 MB root against the floor of
compressing the very same cpio bytes with the same compressor and level.

    python bench/build_speed.py [--size-mb 60] [--runs 3] [--compress gzip,zstd]

Images are generated synthetically (incompressible random data mixed with compressible
text-like data, several layers, hard links, symlinks) into a temporary store; the first build
warms the caches and is not counted. Goal: build time <= 1.3 x the floor.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


WORDS = [
    b"lorem",
    b"ipsum",
    b"kernel",
    b"module",
    b"config",
    b"service",
    b"network",
    b"container",
    b"runtime",
    b"initrd",
    b"busybox",
    b"static",
    b"library",
    b"\n",
]


def synth_data(rng: random.Random, size: int, compressible: bool) -> bytes:
    if not compressible:
        return rng.randbytes(size)
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(WORDS, k=64)) + b"%d\n" % rng.randrange(1 << 30)
    return bytes(out[:size])


def write_layer_tar(
    path: Path,
    rng: random.Random,
    total: int,
    *,
    prefix: str,
    file_size: tuple[int, int],
    links: bool = True,
) -> int:
    """A layer tar of about ``total`` bytes of file data, streamed to ``path``."""
    written = 0
    count = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("", "bin", "lib", "share", "share/doc"):
            info = tarfile.TarInfo(f"{prefix}/{directory}".rstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        while written < total:
            size = min(rng.randint(*file_size), total - written)
            compressible = rng.random() < 0.6
            data = synth_data(rng, size, compressible)
            directory = rng.choice(["bin", "lib", "share", "share/doc"])
            name = f"{prefix}/{directory}/f{count:05d}"
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755 if directory == "bin" else 0o644, 1
            tar.addfile(info, io.BytesIO(data))
            if links and count % 50 == 0:
                link = tarfile.TarInfo(name + ".hl")
                link.type, link.linkname = tarfile.LNKTYPE, name
                tar.addfile(link)
                sym = tarfile.TarInfo(name + ".sym")
                sym.type, sym.linkname = tarfile.SYMTYPE, f"/{name}"
                tar.addfile(sym)
            written += size
            count += 1
    return written


def make_images(
    store_root: Path,
    work: Path,
    total_mb: int,
    *,
    file_size: tuple[int, int] = (2_000, 400_000),
    compression: str = "gzip",
) -> str:
    """Write a kernel image, an init image and a service image (about ``total_mb`` MB of
    root in all) into a store at ``store_root``; return the spec file's path."""
    from provision.oci.imagebuild import tar_layer_from_entries, write_image
    from provision.oci.store import ImageStore

    store = ImageStore(store_root)
    rng = random.Random(20240601)
    total = total_mb * 1_000_000
    kernel = tar_layer_from_entries(
        [
            ("kernel", rng.randbytes(2_000_000)),
            (
                "kernel.tar",
                tar_layer_from_entries([("lib/modules/6.1/m.ko", rng.randbytes(100_000))]),
            ),
        ]
    )
    write_image(store, "bench.test/kernel:1", [kernel], {}, compression=compression)  # type: ignore[arg-type]
    init_layers = []
    for index, share in enumerate((0.5, 0.3)):
        path = work / f"init-{index}.tar"
        write_layer_tar(path, rng, int(total * share), prefix=f"usr{index}", file_size=file_size)
        init_layers.append(path)
    write_image(store, "bench.test/init:1", init_layers, {}, compression=compression)  # type: ignore[arg-type]
    service = work / "service.tar"
    write_layer_tar(service, rng, int(total * 0.2), prefix="app", file_size=file_size)
    write_image(
        store, "bench.test/app:1", [service], {"Cmd": ["/app/bin/f00000"]}, compression=compression
    )  # type: ignore[arg-type]
    for layer in (*init_layers, service):
        layer.unlink()
    spec = work / "bench.yml"
    spec.write_text(
        "kernel:\n  image: bench.test/kernel:1\n  cmdline: console=ttyS0\n"
        "init:\n  - bench.test/init:1\n"
        "services:\n  - name: app\n    image: bench.test/app:1\n"
    )
    return str(spec)


def time_build(spec: str, store_root: Path, outdir: Path, compress: str) -> float:
    from provision.build import build_image
    from provision.compress import parse_compression
    from provision.oci.store import ImageStore

    start = time.perf_counter()
    build_image(
        [spec],
        store=ImageStore(store_root),
        formats="kernel+initrd",
        outdir=outdir,
        pull="never",
        compress=parse_compression(compress),
    )
    return time.perf_counter() - start


def extract_cpio(initrd: Path, compress: str) -> bytes:
    from provision.compress import parse_compression

    return parse_compression(compress).codec.decompress(initrd.read_bytes())


def time_floor(cpio: bytes, compress: str) -> float:
    from provision.compress import make_compressor, parse_compression

    codec = make_compressor(parse_compression(compress))
    start = time.perf_counter()
    view = memoryview(cpio)
    for offset in range(0, len(cpio), 1 << 20):
        codec.compress(bytes(view[offset : offset + (1 << 20)]))
    codec.flush()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=60)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compress", default="gzip,zstd")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="provision-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        spec = make_images(work / "store", work, args.size_mb)
        print(f"generated images in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        rows = []
        for compress in args.compress.split(","):
            outdir = work / f"out-{compress}"
            time_build(spec, work / "store", outdir, compress)  # warm-up, not counted
            cpio = extract_cpio(outdir / "bench-initrd.img", compress)
            builds, floors = [], []
            for _ in range(args.runs):  # interleaved, so machine load hits both alike
                builds.append(time_build(spec, work / "store", outdir, compress))
                floors.append(time_floor(cpio, compress))
            build, floor = min(builds), min(floors)
            rows.append((compress, len(cpio), build, floor, build / floor))
    print(
        f"{'compress':<10} {'root (cpio)':>12} {'build s':>9} {'floor s':>9} {'ratio':>7}"
        f"  goal <= 1.30"
    )
    for compress, size, build, floor, ratio in rows:
        verdict = "ok" if ratio <= 1.3 else "OVER"
        print(
            f"{compress:<10} {size / 1e6:>10.1f}MB {build:>9.2f} {floor:>9.2f} "
            f"{ratio:>6.2f}x  {verdict}"
        )
    print(f"(best of {args.runs} runs each; {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
