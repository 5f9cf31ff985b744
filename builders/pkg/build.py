"""``provision pkg lock / build / tag``: a recipe and its lock into an OCI image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.builders.pkg.apt import Apt, default_deb_cache, parse_depends
from provision.builders.pkg.closure import resolve_libraries
from provision.builders.pkg.deb import DebFile, iter_deb_files, select_files
from provision.builders.pkg.elf import MissingDependency, check_elf_closure
from provision.builders.pkg.image import (
    ImageFiles,
    image_config,
    image_name,
    layer_order,
    platform_for,
    recipe_tag,
)
from provision.builders.pkg.kernel import KernelModules, assemble_kernel
from provision.builders.pkg.lock import Lock, LockedPackage, Resolution, read_lock
from provision.builders.pkg.recipe import Recipe
from provision.errors import ProvisionError
from provision.oci.imagebuild import LayerEntry, tar_layer_from_entries, write_image
from provision.oci.store import ImageStore
from provision.runner import require_tools, run

Progress = Callable[[str], None]
DEV_TAG = "dev"


class ElfClosureError(ProvisionError):
    """ELF files of a component need libraries (or a loader) the image does not hold."""

    def __init__(self, recipe: Recipe, missing: Sequence[MissingDependency], hint: str) -> None:
        lines = "\n".join(f"  {m}" for m in missing)
        super().__init__(
            f"{recipe.recipe_file}: elf_closure: {len(missing)} missing dependenc"
            + ("y" if len(missing) == 1 else "ies")
            + f":\n{lines}",
            hint,
        )
        self.missing = tuple(missing)


@dataclass(frozen=True)
class BuildResult:
    name: str  # provision/NAME:TAG
    tag: str
    digest: str  # the manifest digest
    layer_size: int  # bytes of the uncompressed layer
    packages: tuple[LockedPackage, ...]
    kernel: KernelModules | None = None


def _noop(_message: str) -> None:
    return None


# ------------------------------------------------------------------ lock
def lock_recipe(
    recipe: Recipe, apt: Apt, deb_cache: Path | None = None, progress: Progress = _noop
) -> Lock:
    """Resolve every package of ``recipe`` (the kernel's meta package through its
    dependency on a ``linux-image-*`` package) to apt's candidate version; with
    ``elf_closure: resolve``, add the library packages its ELF files need."""
    apt.require()
    architecture = apt.architecture()
    packages: dict[str, LockedPackage] = {}
    resolved: list[Resolution] = []
    for name in recipe.packages:
        packages[name], _record = apt.resolve(name, architecture)
    if recipe.kernel is not None:
        meta, record = apt.resolve(recipe.kernel.package, architecture)
        target = next(
            (alt for group in parse_depends(record.get("Depends", "")) for alt in group
             if alt.startswith("linux-image-")),
            None,
        )  # fmt: skip
        if target is None:
            packages[meta.name] = meta
        else:
            packages[target], _record = apt.resolve(target, architecture)
            resolved.append(Resolution(meta.name, meta.version, target))
    lock = Lock(architecture, tuple(packages.values()), tuple(resolved))
    if recipe.resolve_libraries:
        cache = deb_cache or default_deb_cache()

        def assemble(recipe: Recipe, lock: Lock, check: bool) -> dict[str, LayerEntry]:
            debs = fetch_packages(recipe, lock, apt, cache, progress)
            return assemble_image_files(recipe, lock, debs, progress, check=check)[0]

        lock = resolve_libraries(recipe, lock, apt, cache, assemble, progress)
    return lock


def check_lock(recipe: Recipe, lock: Lock) -> None:
    """The lock must resolve exactly the recipe's packages."""
    missing = lock.covers(recipe.all_packages())
    expected = {lock.package(n).name for n in recipe.all_packages() if n not in missing}
    expected |= {name for name, _paths in lock.libraries}
    extra = sorted({p.name for p in lock.packages} - expected)
    if missing or extra:
        detail = []
        if missing:
            detail.append("lacks " + ", ".join(missing))
        if extra:
            detail.append("has packages the recipe no longer lists: " + ", ".join(extra))
        raise ProvisionError(
            f"{recipe.lock_file}: out of date: it " + "; ".join(detail),
            hint=f"re-resolve: provision pkg lock {recipe.directory}",
        )


# ------------------------------------------------------------------ build
def fetch_packages(
    recipe: Recipe, lock: Lock, apt: Apt, deb_cache: Path, progress: Progress = _noop
) -> dict[str, Path]:
    """Every locked .deb, verified against the lock (and apt's index), by package name."""
    debs = {}
    for package in sorted(lock.packages, key=lambda p: p.name):
        progress(f"fetch {package.name} {package.version}")
        debs[package.name] = apt.download(package, deb_cache)
    return debs


def _package_entries(recipe: Recipe, name: str, files: Sequence[DebFile], label: str
                     ) -> list[tuple[str, LayerEntry]]:  # fmt: skip
    kept = select_files(files, recipe.keep_globs(name), label)
    return [(f.path, f.entry) for f in kept]


def _recipe_entries(recipe: Recipe, image: ImageFiles) -> None:
    origin = str(recipe.recipe_file)
    for directory in recipe.directories:
        image.add(directory, LayerEntry.dir(directory), f"{origin} directories", replace=False)
    for spec in recipe.files:
        if spec.source is not None:
            content = (recipe.directory / spec.source).read_bytes()
        else:
            content = (spec.contents or "").encode()
        entry = LayerEntry.file(spec.path, content, spec.mode, uid=spec.uid, gid=spec.gid)
        image.add(spec.path, entry, f"{origin} files")
    for path, target in recipe.symlinks:
        image.add(path, LayerEntry.symlink(path, target), f"{origin} symlinks")


def closure_hint(missing: Sequence[MissingDependency]) -> str:
    """Which host packages ship the missing names (dpkg -S), as a hint to add them."""
    names = sorted({m.needs.rsplit("/", 1)[-1] for m in missing})
    owners: dict[str, str] = {}
    for soname in names:
        result = run(["dpkg-query", "-S", f"*/{soname}"], check=False)
        for line in result.stdout.decode(errors="replace").splitlines():
            package = line.split(":", 1)[0].split(",")[0].strip()
            owners.setdefault(soname, package)
    found = ", ".join(f"{s} is in {p}" for s, p in owners.items())
    return ("add the packages that ship them to packages: and keep:"
            + (f" (on this host: {found})" if found else ""))  # fmt: skip


def assemble_image_files(
    recipe: Recipe,
    lock: Lock,
    debs: dict[str, Path],
    progress: Progress = _noop,
    *,
    check: bool = True,
) -> tuple[dict[str, LayerEntry], KernelModules | None]:
    """The image's entries by absolute path: kept package files, then the recipe's own
    directories, files and symlinks; the kernel's two files for a kernel recipe."""
    image = ImageFiles()
    kernel: KernelModules | None = None
    for name in recipe.packages:
        package = lock.package(name)
        label = f"{package.name} {package.version} ({debs[package.name].name})"
        progress(f"unpack {package.name}")
        files = list(iter_deb_files(debs[package.name], label))
        image.add_all(_package_entries(recipe, name, files, label), label)
    for name, paths in lock.libraries:
        package = lock.package(name)
        label = f"{package.name} {package.version} ({debs[package.name].name}, a library)"
        files = list(iter_deb_files(debs[package.name], label))
        image.add_all([(f.path, f.entry) for f in select_files(files, paths, label)], label)
    if recipe.kernel is not None:
        package = lock.package(recipe.kernel.package)
        label = f"{package.name} {package.version}"
        progress(f"kernel {package.name}: modules and depmod")
        files = list(iter_deb_files(debs[package.name], label))
        kernel_files, kernel = assemble_kernel(files, recipe.kernel)
        image.add_all([("/" + e.path, e) for e in kernel_files], label)
    _recipe_entries(recipe, image)
    entries = image.complete()
    if recipe.elf_closure and check:
        missing = check_elf_closure(entries)
        if missing:
            raise ElfClosureError(recipe, missing, closure_hint(missing))
    return entries, kernel


def build_recipe(
    recipe: Recipe,
    store: ImageStore,
    apt: Apt,
    deb_cache: Path,
    *,
    extra_tags: Sequence[str] = (DEV_TAG,),
    progress: Progress = _noop,
) -> BuildResult:
    """Build ``recipe`` from its lock into ``store`` as ``provision/NAME:TAG`` (and each of
    ``extra_tags``). The same recipe and lock give the same image digest anywhere."""
    require_tools(["dpkg-deb"] + (["depmod"] if recipe.kernel else []))
    lock = read_lock(recipe.lock_file)
    check_lock(recipe, lock)
    tag = recipe_tag(recipe.directory)
    debs = fetch_packages(recipe, lock, apt, deb_cache, progress)
    entries, kernel = assemble_image_files(recipe, lock, debs, progress)
    layer = tar_layer_from_entries(layer_order(entries))
    name = image_name(recipe, tag)
    progress(f"write {name}")
    image = write_image(
        store, name, [layer], image_config(recipe, lock),
        platform=platform_for(lock.architecture), created=0,
    )  # fmt: skip
    for extra in extra_tags:
        store.tag(image_name(recipe, extra), image.descriptor)
    return BuildResult(name, tag, image.digest, len(layer), lock.packages, kernel)
