"""``provision pkg lock | build | tag``: component images from Debian packages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from provision.builders.pkg import (
    Apt,
    AptConfig,
    build_recipe,
    default_deb_cache,
    find_recipes,
    image_name,
    load_recipe,
    lock_recipe,
    recipe_tag,
    write_lock,
)
from provision.builders.pkg.lock import dump_lock
from provision.commands import open_image_store
from provision.errors import UsageError
from provision.reference import ImageRef


def register(subparsers: Any) -> None:
    pkg = subparsers.add_parser(
        "pkg",
        help="build the component images (kernel, init, services) from Debian packages",
        description="Recipes live in pkg/NAME/build.yml (see docs/pkg-recipes.md). Packages "
        "come from the host's apt configuration, or from --sources FILE / "
        "$PROVISION_APT_SOURCES.",
    )
    actions = pkg.add_subparsers(dest="pkg_command", metavar="ACTION", required=True)

    def recipes_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("recipes", nargs="*", type=Path, metavar="pkg/NAME")
        parser.add_argument("--all", action="store_true", help="every recipe under --root")
        parser.add_argument("--root", type=Path, default=Path("pkg"),
                            help="where recipes live for --all (default: pkg)")  # fmt: skip

    def apt_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sources", type=Path, metavar="FILE",
                            help="an apt sources file (.list or .sources) to use instead of the "
                            "host's configuration")  # fmt: skip

    lock = actions.add_parser("lock", help="resolve package versions into pkg/NAME/lock.yml")
    recipes_args(lock)
    apt_args(lock)
    lock.add_argument("--update", action="store_true",
                      help="with --sources: refresh its index first")  # fmt: skip
    lock.add_argument("--debs", type=Path, metavar="DIR",
                      help="download cache for elf_closure: resolve")  # fmt: skip
    lock.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 when a lock would change")  # fmt: skip
    lock.set_defaults(func=pkg_lock)

    build = actions.add_parser("build", help="build component images into the image cache")
    recipes_args(build)
    apt_args(build)
    build.add_argument("--cache", type=Path, metavar="DIR", help="image cache directory")
    build.add_argument("--debs", type=Path, metavar="DIR",
                       help="download cache of .deb files (default: $PROVISION_DEB_CACHE or "
                       "~/.cache/provision/debs)")  # fmt: skip
    build.add_argument("--push", metavar="REGISTRY/REPO",
                       help="also push each image to REGISTRY/REPO/NAME:TAG")  # fmt: skip
    build.add_argument("--no-dev-tag", action="store_true",
                       help="do not move provision/NAME:dev to the new image")  # fmt: skip
    build.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    build.set_defaults(func=pkg_build)

    tag = actions.add_parser("tag", help="print the image name a build would write")
    recipes_args(tag)
    tag.set_defaults(func=pkg_tag)


def _recipe_dirs(args: argparse.Namespace) -> list[Path]:
    if args.all and args.recipes:
        raise UsageError("give recipe directories or --all, not both")
    if args.all:
        dirs = find_recipes(args.root)
        if not dirs:
            raise UsageError(f"no recipes (*/build.yml) under {args.root}")
        return dirs
    if not args.recipes:
        raise UsageError("name a recipe directory (pkg/NAME) or give --all")
    return list(args.recipes)


def _apt(args: argparse.Namespace) -> Apt:
    return Apt(AptConfig.from_environment(args.sources))


def pkg_lock(args: argparse.Namespace) -> int:
    recipes = [load_recipe(d) for d in _recipe_dirs(args)]
    apt = _apt(args)
    apt.ensure_lists(refresh=args.update)
    changed = 0
    for recipe in recipes:
        lock = lock_recipe(recipe, apt, args.debs or default_deb_cache())
        old = recipe.lock_file.read_text() if recipe.lock_file.is_file() else None
        new = dump_lock(lock)
        if old == new:
            print(f"{recipe.lock_file}: up to date")
            continue
        changed += 1
        if args.check:
            print(f"{recipe.lock_file}: would change")
            continue
        write_lock(recipe.lock_file, lock)
        for package in sorted(lock.packages, key=lambda p: p.name):
            print(f"{recipe.lock_file}: {package.name} {package.version}")
    return 1 if args.check and changed else 0


def pkg_build(args: argparse.Namespace) -> int:
    recipes = [load_recipe(d) for d in _recipe_dirs(args)]
    store = open_image_store(args.cache)
    apt = _apt(args)
    apt.ensure_lists()
    debs = args.debs or default_deb_cache()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"  {message}", file=sys.stderr)

    client = None
    if args.push:
        from provision.oci.registry import default_client

        client = default_client()
    for recipe in recipes:
        if not args.quiet:
            print(f"pkg/{recipe.name}:", file=sys.stderr)
        result = build_recipe(
            recipe, store, apt, debs,
            extra_tags=() if args.no_dev_tag else ("dev",), progress=progress,
        )  # fmt: skip
        print(f"{result.name} {result.digest}")
        if client is not None:
            target = ImageRef.parse(f"{args.push.rstrip('/')}/{recipe.name}:{result.tag}")
            digest = client.push(store, result.name, target)
            print(f"pushed {target} {digest}")
    return 0


def pkg_tag(args: argparse.Namespace) -> int:
    for directory in _recipe_dirs(args):
        recipe = load_recipe(directory)
        print(image_name(recipe, recipe_tag(recipe.directory)))
    return 0
