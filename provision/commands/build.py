"""``provision build``: build an image spec into one or more output formats."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from provision.commands import argument_type, open_image_store
from provision.compress import Compression, parse_compression
from provision.errors import UsageError
from provision.oci.model import Platform
from provision.oci.pull import PULL_POLICIES

_SIZE = re.compile(r"^(\d+)\s*([kmgt]?)(i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``1G``, ``512M``, ``1073741824``, ``2GiB`` (binary units)."""
    match = _SIZE.match(text.strip())
    size = int(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0
    if not 0 < size <= _UNITS["t"] * 16:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r} (write e.g. 1G or 512M, at most 16T)"
        )
    return size


def format_epilog() -> str:
    """The output formats, from the registry: name, files, how each boots."""
    from provision.builders.formats import WRITERS, describe_boot

    width = max(len(w.name) for w in WRITERS) + 2
    file_width = max(len(w.extension) for w in WRITERS) + 6
    lines = ["output formats (-f), their main file and how they boot:"]
    for writer in WRITERS:
        lines.append(
            f"  {writer.name:<{width}}{'NAME' + writer.extension:<{file_width}}"
            f"{describe_boot(writer.boot)}"
        )
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "build",
        help="build an image spec into kernel+initrd, tar, disk and ISO images",
        description="Build a LinuxKit image spec (several files merge in order) into one or "
        "more output formats, reproducibly. Writes NAME.manifest.json next to the outputs.",
        epilog=format_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("specs", nargs="+", type=Path, metavar="SPEC", help="spec file(s)")
    parser.add_argument(
        "-f",
        "--format",
        default="kernel+initrd",
        metavar="FORMATS",
        help="comma-separated output formats (default: kernel+initrd; "
        "all of them are listed below)",
    )
    parser.add_argument(
        "-o",
        "--output",
        "--dir",
        dest="outdir",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="output directory (default: .)",
    )
    parser.add_argument("--name", help="output name (default: the first spec file's stem)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the merged, resolved spec and exit"
    )
    parser.add_argument(
        "--pull",
        choices=PULL_POLICIES,
        default="missing",
        help="when to pull images (default: missing)",
    )
    parser.add_argument(
        "--compress",
        type=argument_type(parse_compression),
        default=Compression(),
        metavar="gzip|zstd|xz[:LEVEL]",
        help="initrd compression (default gzip)",
    )
    parser.add_argument("--size", type=parse_size, help="disk size for disk formats (e.g. 1G)")
    parser.add_argument(
        "--boot-size",
        type=parse_size,
        metavar="SIZE",
        help="fixed boot partition size for disk formats, so disks of later "
        "images can be re-imaged (default: fit the content)",
    )
    parser.add_argument(
        "--data-size",
        type=parse_size,
        metavar="SIZE",
        help="add a persistent ext4 data partition (label provision-data, "
        "mounted at /var/persist) of SIZE to disk formats",
    )
    parser.add_argument(
        "--no-dedupe",
        dest="dedupe",
        action="store_false",
        help="keep identical container files as copies (default: hard links)",
    )
    parser.add_argument(
        "--platform", type=argument_type(Platform.parse), help="os/arch[/variant] (default: host)"
    )
    parser.add_argument("--cache", type=Path, metavar="DIR", help="image cache directory")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from provision.build import build_image, parse_formats
    from provision.spec.image import dump_spec
    from provision.spec.load import load_spec

    if args.dry_run:
        sys.stdout.write(dump_spec(load_spec(args.specs)))
        return 0
    if args.outdir.exists() and not args.outdir.is_dir():
        raise UsageError(
            f"--output {args.outdir}: not a directory",
            hint="outputs go into a directory (created when missing)",
        )
    started = time.monotonic()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr)

    result = build_image(
        args.specs,
        store=open_image_store(args.cache),
        formats=parse_formats(args.format),
        outdir=args.outdir,
        name=args.name,
        pull=args.pull,
        compress=args.compress,
        size=args.size,
        boot_size=args.boot_size,
        data_size=args.data_size,
        dedupe=args.dedupe,
        platform=args.platform,
        progress=progress,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "name": result.name,
                    "image_digest": result.image_digest,
                    "source_date_epoch": result.source_date_epoch,
                    "outputs": [str(p) for p in result.outputs],
                    "manifest": str(result.manifest),
                },
                indent=2,
                sort_keys=True,
            )
        )
    else:
        for path in result.outputs:
            print(path)
    return 0
