"""The image spec: LinuxKit's YAML format as frozen dataclasses, parsed strictly.

The field tables live in :mod:`provision.spec.fields`; this module holds the dataclasses'
public home, the per-file parse, the label parse and the canonical dump. Loading several files
into one spec is :func:`provision.spec.load.load_spec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provision.errors import Problem, SpecError
from provision.spec.fields import (
    CAPABILITIES,
    INVALID,
    KERNEL_TABLE,
    RLIMITS,
    BindNamespaces,
    Ctx,
    Device,
    FileEntry,
    IDMapping,
    ImageConfig,
    ImageEntry,
    Interface,
    KernelSpec,
    Mount,
    RuntimeActions,
    VolumeSpec,
    p_list,
    p_obj,
    p_str,
    parse_file_entry,
    parse_image_config,
    parse_image_entry,
    parse_volume,
    table_yaml_keys,
    type_name,
)
from provision.spec.source import (
    Mark,
    YamlList,
    YamlMap,
    mark_of,
    parse_yaml_text,
    read_yaml_file,
)

__all__ = [
    "CAPABILITIES",
    "RLIMITS",
    "BindNamespaces",
    "Device",
    "FileEntry",
    "IDMapping",
    "ImageConfig",
    "ImageEntry",
    "ImageSpec",
    "Interface",
    "KernelSpec",
    "Located",
    "Mount",
    "ParsedFile",
    "Removal",
    "RuntimeActions",
    "VolumeSpec",
    "dump_spec",
    "parse_image_config_label",
    "parse_spec_file",
    "spec_to_dict",
]

LABEL_KEY = "org.mobyproject.config"
TOP_KEYS = (
    "kernel",
    "init",
    "onboot",
    "onshutdown",
    "services",
    "files",
    "volumes",
    "trust",
    "remove",
)
ENTRY_SECTIONS = ("onboot", "onshutdown", "services")
REMOVABLE = ("init", "onboot", "onshutdown", "services", "files", "volumes")


@dataclass(frozen=True)
class ImageSpec:
    """The whole, merged, resolved spec."""

    kernel: KernelSpec | None = None
    init: tuple[str, ...] = ()
    onboot: tuple[ImageEntry, ...] = ()
    onshutdown: tuple[ImageEntry, ...] = ()
    services: tuple[ImageEntry, ...] = ()
    files: tuple[FileEntry, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Located:
    """A parsed entry with where it was written and whether it replaces an earlier one."""

    value: Any
    mark: Mark
    key: str
    replace: bool = False
    raw: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Removal:
    """``remove: {section: [name, ...]}``: drop an entry written by an earlier file."""

    section: str
    name: str
    mark: Mark
    key: str


@dataclass
class ParsedFile:
    """One spec file, parsed and checked on its own, with locations kept for merging."""

    file: str
    kernel: dict[str, tuple[Any, Mark]] = field(default_factory=dict)
    kernel_mark: Mark | None = None
    init: list[Located] = field(default_factory=list)
    onboot: list[Located] = field(default_factory=list)
    onshutdown: list[Located] = field(default_factory=list)
    services: list[Located] = field(default_factory=list)
    files: list[Located] = field(default_factory=list)
    volumes: list[Located] = field(default_factory=list)
    removals: list[Removal] = field(default_factory=list)


def parse_spec_file(path: Path) -> tuple[ParsedFile, list[Problem]]:
    """Read and check one spec file on its own (cross-file checks come with the merge)."""
    value, problems = read_yaml_file(path)
    ctx = Ctx(str(path), path.resolve().parent if path.exists() else Path.cwd())
    ctx.problems.extend(problems)
    parsed = ParsedFile(str(path))
    if value is None:
        return parsed, ctx.problems
    doc_mark = mark_of(value, Mark(str(path), 1, 1))
    if not isinstance(value, YamlMap):
        ctx.err(doc_mark, "", f"a spec must be a mapping, not {type_name(value)}")
        return parsed, ctx.problems
    parse_document(ctx, value, parsed)
    return parsed, ctx.problems


def parse_document(ctx: Ctx, doc: YamlMap, parsed: ParsedFile) -> None:
    for key in doc:
        if key not in TOP_KEYS:
            ctx.unknown_key(doc.key_mark(key), key, key, TOP_KEYS)
    if "kernel" in doc:
        parse_kernel(ctx, doc["kernel"], doc.value_mark("kernel"), parsed)
    if "init" in doc:
        refs = p_list(p_str(check="image_ref"))(ctx, doc["init"], doc.value_mark("init"), "init")
        if refs is not INVALID:
            marks: YamlList = doc["init"]
            parsed.init = [
                Located(ref, marks.item_mark(i), f"init[{i}]") for i, ref in enumerate(refs)
            ]
    for section in ENTRY_SECTIONS:
        if section in doc:
            getattr(parsed, section).extend(
                parse_located_list(ctx, doc, section, parse_image_entry)
            )
    if "files" in doc:
        parsed.files = parse_located_list(ctx, doc, "files", parse_file_entry)
    if "volumes" in doc:
        parsed.volumes = parse_located_list(ctx, doc, "volumes", parse_volume)
    if "trust" in doc:  # accepted and ignored, as LinuxKit does; its shape is still checked
        trust = p_obj({"image": ("image", p_list(p_str())), "org": ("org", p_list(p_str()))}, dict)
        trust(ctx, doc["trust"], doc.value_mark("trust"), "trust")
    if "remove" in doc:
        parsed.removals = parse_removals(ctx, doc["remove"], doc.value_mark("remove"))


def parse_kernel(ctx: Ctx, value: Any, mark: Mark, parsed: ParsedFile) -> None:
    result = p_obj(KERNEL_TABLE, dict)(ctx, value, mark, "kernel")
    if result is INVALID or not isinstance(value, YamlMap):
        return
    parsed.kernel_mark = mark
    attrs = {yaml_key: attr for yaml_key, (attr, _) in KERNEL_TABLE.items()}
    for yaml_key in value:
        attr = attrs.get(yaml_key)
        if attr is not None and attr in result:
            parsed.kernel[attr] = (result[attr], value.value_mark(yaml_key))


def parse_located_list(ctx: Ctx, doc: YamlMap, section: str, parse_one: Any) -> list[Located]:
    items = doc[section]
    mark = doc.value_mark(section)
    if not isinstance(items, YamlList):
        ctx.err(mark, section, f"must be a list, not {type_name(items)}")
        return []
    located: list[Located] = []
    for index, item in enumerate(items):
        key = f"{section}[{index}]"
        item_mark = items.item_mark(index)
        replace = False
        if isinstance(item, YamlMap) and "replace" in item:
            flag = item.pop("replace")
            if isinstance(flag, bool):
                replace = flag
            else:
                ctx.err(
                    item.value_mark("replace"),
                    f"{key}.replace",
                    f"must be true or false, not {type_name(flag)}",
                )
        value = parse_one(ctx, item, item_mark, key)
        if value is not INVALID:
            located.append(Located(value, item_mark, key, replace, item))
    return located


def parse_removals(ctx: Ctx, value: Any, mark: Mark) -> list[Removal]:
    if not isinstance(value, YamlMap):
        ctx.err(mark, "remove", f"must be a mapping of section to names, not {type_name(value)}")
        return []
    removals: list[Removal] = []
    for section in value:
        key = f"remove.{section}"
        if section not in REMOVABLE:
            ctx.unknown_key(value.key_mark(section), key, section, REMOVABLE)
            continue
        names = p_list(p_str())(ctx, value[section], value.value_mark(section), key)
        if names is INVALID:
            continue
        items: YamlList = value[section]
        removals.extend(
            Removal(section, name, items.item_mark(i), f"{key}[{i}]")
            for i, name in enumerate(names)
        )
    return removals


def parse_image_config_label(text: str, image: str) -> ImageConfig:
    """The ``org.mobyproject.config`` label of ``image`` (JSON in the image entry schema,
    without ``name``/``image``), checked by the same code as the YAML."""
    file = f"{image} label {LABEL_KEY}"
    value, problems = parse_yaml_text(text, file)
    ctx = Ctx(file, None)
    ctx.problems.extend(problems)
    mark = Mark(file, 1, 1)
    config: Any = INVALID
    if value is None and not problems:
        config = ImageConfig()
    elif value is not None:
        if isinstance(value, YamlMap):
            for forbidden in ("name", "image"):
                if forbidden in value:
                    ctx.err(
                        value.key_mark(forbidden),
                        forbidden,
                        f"{forbidden} cannot be set in the {LABEL_KEY} label",
                    )
                    del value[forbidden]
        config = parse_image_config(ctx, value, mark, "")
    if ctx.problems or config is INVALID:
        raise SpecError(
            ctx.problems or [mark.problem("", "invalid label")],
            hint=f"the image {image} carries a broken {LABEL_KEY} label",
        )
    assert isinstance(config, ImageConfig)
    return config


# --- the canonical dump ---------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Dataclasses to LinuxKit-shaped dicts (YAML key names, unset fields left out)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    keys = getattr(type(value), "YAML_KEYS", None)
    if keys is None:
        return value
    out: dict[str, Any] = {}
    for attr, yaml_key in keys.items():
        item = getattr(value, attr)
        if item is not None:
            out[yaml_key] = _plain(item)
    return out


def spec_to_dict(spec: ImageSpec) -> dict[str, Any]:
    """The merged, resolved spec as plain data in LinuxKit's shape (loads back equal)."""
    out: dict[str, Any] = {}
    if spec.kernel is not None:
        kernel: dict[str, Any] = {"image": spec.kernel.image, "cmdline": spec.kernel.cmdline}
        if spec.kernel.binary != "kernel":
            kernel["binary"] = spec.kernel.binary
        if spec.kernel.tar != "kernel.tar":
            kernel["tar"] = spec.kernel.tar if spec.kernel.tar is not None else "none"
        if spec.kernel.ucode is not None:
            kernel["ucode"] = spec.kernel.ucode
        out["kernel"] = kernel
    if spec.init:
        out["init"] = list(spec.init)
    for section in ENTRY_SECTIONS:
        entries = getattr(spec, section)
        if entries:
            out[section] = [_plain(entry) for entry in entries]
    if spec.files:
        out["files"] = [_file_to_dict(entry) for entry in spec.files]
    if spec.volumes:
        out["volumes"] = [_volume_to_dict(volume) for volume in spec.volumes]
    return out


def _file_to_dict(entry: FileEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"path": entry.path}
    if entry.directory:
        out["directory"] = True
    for name in ("symlink", "contents"):
        if getattr(entry, name) is not None:
            out[name] = getattr(entry, name)
    if entry.source is not None:
        out["source"] = entry.source_as_written or entry.source
    if entry.metadata is not None:
        out["metadata"] = entry.metadata
    if entry.optional:
        out["optional"] = True
    for name in ("mode", "uid", "gid"):
        if getattr(entry, name) is not None:
            out[name] = getattr(entry, name)
    return out


def _volume_to_dict(volume: VolumeSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": volume.name}
    if volume.image is not None:
        out["image"] = volume.image
    if volume.readonly:
        out["readonly"] = True
    if volume.format != "filesystem":
        out["format"] = volume.format
    if volume.platforms:
        out["platforms"] = list(volume.platforms)
    return out


def dump_spec(spec: ImageSpec) -> str:
    """Canonical YAML of the merged, resolved spec: the same spec gives the same text."""
    text: str = yaml.safe_dump(
        spec_to_dict(spec),
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,
    )
    return text


def image_config_keys() -> tuple[str, ...]:
    """Every key an image entry accepts (for help and tests)."""
    return table_yaml_keys()
