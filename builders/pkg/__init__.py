"""The component builder: recipes (``pkg/NAME/build.yml``) of Debian packages into OCI images.

Public API::

    recipe = load_recipe(Path("pkg/init"))
    apt = Apt(AptConfig.from_environment())
    write_lock(recipe.lock_file, lock_recipe(recipe, apt))
    result = build_recipe(recipe, ImageStore.default(), apt, default_deb_cache())
    result.name, result.digest  # "provision/init:<12 hex>", "sha256:..."
"""

from provision.builders.pkg.apt import Apt, AptConfig, default_deb_cache
from provision.builders.pkg.build import (
    BuildResult,
    ElfClosureError,
    build_recipe,
    check_lock,
    lock_recipe,
)
from provision.builders.pkg.image import image_name, recipe_tag
from provision.builders.pkg.lock import Lock, LockedPackage, read_lock, write_lock
from provision.builders.pkg.recipe import KernelSpec, Recipe, find_recipes, load_recipe

__all__ = [
    "Apt",
    "AptConfig",
    "BuildResult",
    "ElfClosureError",
    "KernelSpec",
    "Lock",
    "LockedPackage",
    "Recipe",
    "build_recipe",
    "check_lock",
    "default_deb_cache",
    "find_recipes",
    "image_name",
    "load_recipe",
    "lock_recipe",
    "read_lock",
    "recipe_tag",
    "write_lock",
]
