"""What building only the inputs a format declares saves: ``provision build -f raw-efi`` of
examples/web.yml from a warm component store, side by side with the same build where raw-efi
asks for every input (as the pipeline treated every writer before formats declared their
inputs: kernel, initrd AND the canonical root tar, which no disk format reads).

Both variants run alternately (one untimed warm-up build each, then ``--repeat`` of each, so
machine load hits both alike); the median and the best wall time and the median bytes this process wrote
(``wchar`` of /proc/self/io: the kernel, initrd, root tar, boot partition and disk the
pipeline writes itself; the small writes of sfdisk, mkfs.fat and mtools run as children are
not counted) are printed with their ratio (declared / everything; below 1 is a saving). The
outputs of both are compared byte for byte: declaring inputs changes no output.

Usage: python bench/format_inputs.py [--format raw-efi] [--spec FILE] [--store DIR] [--repeat 5]
The store: ``--store``, else ``$PROVISION_CACHE`` / ``~/.cache/provision/oci`` (fill it with
``provision pkg build --all``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.build import build_image
from provision.builders.base import BootInput, BootInputs, BootMethod, FormatOptions, FormatWriter
from provision.builders.formats import FORMATS
from provision.oci.store import ImageStore

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class NeedsEverything:
    """``inner`` as the pipeline treated every writer before they declared their inputs."""

    inner: FormatWriter
    needs: frozenset[BootInput] = frozenset(BootInput)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def files(self) -> tuple[str, ...]:
        return self.inner.files

    @property
    def extension(self) -> str:
        return self.inner.extension

    @property
    def boot(self) -> BootMethod | None:
        return self.inner.boot

    def tools(self) -> Sequence[str]:
        return self.inner.tools()

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        return self.inner.write(inputs, dest, options)


def bytes_written() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def build_once(
    store: ImageStore, spec: Path, fmt: str, registry: Mapping[str, FormatWriter], out: Path
) -> tuple[float, int, list[str]]:
    said: list[str] = []
    before, start = bytes_written(), time.perf_counter()
    build_image(
        [spec],
        store=store,
        formats=fmt,
        outdir=out,
        pull="never",
        registry=registry,
        progress=said.append,
    )
    return time.perf_counter() - start, bytes_written() - before, said


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", default="raw-efi")
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "web.yml")
    parser.add_argument("--store", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    store = ImageStore(args.store) if args.store else ImageStore.default()
    declared = dict(FORMATS)
    everything = {**declared, args.format: NeedsEverything(declared[args.format])}
    variants = {"declared inputs": declared, "every input": everything}
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in variants}
    steps: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="format-inputs-", dir="/var/tmp") as tmp:
        outputs: dict[str, dict[str, bytes]] = {}
        for index in range(args.repeat + 1):
            for name, registry in variants.items():
                out = Path(tmp) / f"{name.replace(' ', '-')}-{index}"
                seconds, written, said = build_once(store, args.spec, args.format, registry, out)
                if index:  # the first round warms the page cache and lazy imports
                    runs[name].append((seconds, written))
                steps[name] = [m for m in said if m.startswith("write ")][:3]
                outputs[name] = {
                    p.name: p.read_bytes() for p in out.iterdir() if not p.name.endswith(".json")
                }
    if outputs["declared inputs"] != outputs["every input"]:
        print("the outputs differ between the variants", file=sys.stderr)
        return 1
    print(
        f"provision build -f {args.format} {args.spec.name} (store {store.root}), median of {args.repeat}, "
        "alternating"
    )
    print(f"{'variant':<18}{'median s':>9}{'best s':>9}{'MiB written':>13}  intermediates")
    medians: dict[str, tuple[float, float, float]] = {}
    for name, results in runs.items():
        median = statistics.median(s for s, _ in results)
        best = min(s for s, _ in results)
        median_bytes = statistics.median(w for _, w in results)
        medians[name] = (median, best, median_bytes)
        print(
            f"{name:<18}{median:>9.3f}{best:>9.3f}{median_bytes / 2**20:>13.1f}  {', '.join(steps[name])}"
        )
    (a_s, a_b, a_w), (b_s, b_b, b_w) = medians["declared inputs"], medians["every input"]
    print(
        f"{'ratio':<18}{a_s / b_s:>9.2f}{a_b / b_b:>9.2f}{a_w / b_w:>13.2f}  (declared / every input)"
    )
    print("outputs identical in both variants")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
