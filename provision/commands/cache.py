"""``provision cache ls | pull | import | export | rm | gc | push``: the local image cache."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from provision.commands import argument_type, open_image_store
from provision.errors import ImageNotFoundError, UsageError
from provision.oci.archive import export_archive, import_archive
from provision.oci.config import check_parallel
from provision.oci.model import INDEX_MEDIA_TYPES, ImageEntry, Platform
from provision.oci.progress import ProgressFn
from provision.oci.registry import RegistryClient
from provision.oci.store import ImageStore
from provision.reference import ImageRef


def register(subparsers: Any) -> None:
    cache = subparsers.add_parser(
        "cache",
        help="manage the local image cache (an OCI image layout)",
        description="The image cache lives in $PROVISION_CACHE, else ~/.cache/provision/oci.",
    )
    cache.add_argument("--cache", type=Path, metavar="DIR", help="cache directory to use")
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    ls = actions.add_parser("ls", help="list cached images")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cache_ls)

    pull = actions.add_parser("pull", help="pull images from their registries")
    pull.add_argument("refs", nargs="+", metavar="REF")
    pull.add_argument(
        "--platform",
        type=argument_type(Platform.parse),
        help="os/arch[/variant] (default: this host)",
    )
    pull.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    pull.add_argument(
        "--parallel",
        "-j",
        type=argument_type(_parse_parallel),
        metavar="N",
        help="blobs downloaded at once (default: the registries file's parallel, else 4)",
    )
    pull.set_defaults(func=cache_pull)

    imp = actions.add_parser("import", help="import an OCI archive (skopeo oci-archive format)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--name", help="name for the archive's only image")
    imp.set_defaults(func=cache_import)

    exp = actions.add_parser("export", help="export images as an OCI archive")
    exp.add_argument("refs", nargs="+", metavar="REF")
    exp.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    exp.set_defaults(func=cache_export)

    rm = actions.add_parser("rm", help="remove image names (blobs are freed by gc)")
    rm.add_argument("refs", nargs="+", metavar="REF")
    rm.set_defaults(func=cache_rm)

    gc = actions.add_parser("gc", help="delete blobs no cached image uses")
    gc.set_defaults(func=cache_gc)

    push = actions.add_parser("push", help="push a cached image (or index) to a registry")
    push.add_argument("ref", metavar="REF", help="the cached image")
    push.add_argument("target", metavar="TARGET", help="where to push, e.g. host:5000/app:1")
    push.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    push.set_defaults(func=cache_push)


def _store(args: argparse.Namespace) -> ImageStore:
    return open_image_store(args.cache)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _describe(store: ImageStore, entry: ImageEntry) -> dict[str, Any]:
    desc = entry.descriptor
    platforms: list[str] = []
    present = store.has_blob(desc.digest)
    if present and desc.media_type in INDEX_MEDIA_TYPES:
        doc = store.read_json(desc.digest)
        for raw in doc.get("manifests") or ():
            plat = raw.get("platform") or {}
            if store.has_blob(str(raw.get("digest", ""))) and plat:
                platforms.append(str(Platform.from_json(plat)))
    elif desc.platform is not None:
        platforms.append(str(desc.platform))
    size = (
        sum(store.blob_path(d).stat().st_size for d in store.reachable_blobs([desc]))
        if present
        else 0
    )
    return {
        "name": entry.name,
        "digest": desc.digest,
        "media_type": desc.media_type,
        "platforms": sorted(platforms),
        "size": size,
    }


def cache_ls(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = [_describe(store, e) for e in store.list_images()]
    if args.json:
        print(json.dumps({"cache": str(store.root), "images": rows}, indent=2))
        return 0
    if not rows:
        print(f"no images in {store.root}")
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'NAME':<{width}}  DIGEST        SIZE       PLATFORMS")
    for row in rows:
        digest = row["digest"].split(":", 1)[1][:12]
        print(
            f"{row['name']:<{width}}  {digest}  {_human(row['size']):>9}  "
            f"{','.join(row['platforms'])}"
        )
    return 0


def _parse_parallel(text: str) -> int:
    return check_parallel(int(text) if text.isdigit() else text, "--parallel")


BAR_WIDTH = 24


def progress_printer(
    label: str, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
) -> ProgressFn:
    """One image's progress: a bar redrawn in place on a terminal; on anything else a plain
    line every 5 seconds and one at the end."""
    out = stream or sys.stderr
    tty = out.isatty()
    started = clock()
    last = [started - 60.0]

    def report(done: int, total: int) -> None:
        now = clock()
        finished = done >= total
        if not finished and now - last[0] < (0.1 if tty else 5.0):
            return
        last[0] = now
        fraction = min(1.0, done / total) if total else 1.0
        rate = done / max(now - started, 1e-3)
        sizes = f"{_human(done)} / {_human(total)}"
        if tty:
            filled = int(BAR_WIDTH * fraction)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            line = f"{label} [{bar}] {100 * fraction:3.0f}% {sizes} {_human(int(rate))}/s"
            out.write("\r\033[K" + line + ("\n" if finished else ""))
        else:
            out.write(f"{label}: {100 * fraction:3.0f}% {sizes}\n")
        out.flush()

    return report


def cache_pull(args: argparse.Namespace) -> int:
    store = _store(args)
    client = RegistryClient(parallel=args.parallel)
    platform = args.platform or Platform.host()
    refs = [ImageRef.parse(r) for r in args.refs]
    for ref in refs:
        progress = None if args.quiet else progress_printer(f"pull {ref}")
        image = client.pull(store, ref, platform, progress=progress)
        print(f"{ref.name} {image.digest} {image.platform}")
    return 0


def cache_import(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise UsageError(f"{args.file}: no such file")
    for image in import_archive(_store(args), args.file, args.name):
        print(f"{image.name} {image.descriptor.digest}")
    return 0


def cache_export(args: argparse.Namespace) -> int:
    path = export_archive(_store(args), [ImageRef.parse(r) for r in args.refs], args.output)
    print(path)
    return 0


def cache_rm(args: argparse.Namespace) -> int:
    store = _store(args)
    missing = []
    for text in args.refs:
        if not store.untag(text):
            missing.append(text)
    if missing:
        raise ImageNotFoundError(f"not in the cache: {', '.join(missing)}")
    return 0


def cache_gc(args: argparse.Namespace) -> int:
    freed = _store(args).gc()
    print(f"freed {_human(freed)}")
    return 0


def cache_push(args: argparse.Namespace) -> int:
    store = _store(args)
    target = ImageRef.parse(args.target)
    progress = None if args.quiet else progress_printer(f"push {target}")
    digest = RegistryClient().push(store, ImageRef.parse(args.ref), target, progress=progress)
    print(f"{target.name} {digest}")
    return 0
