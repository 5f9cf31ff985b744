"""A TEMPORARY stand-in for provision.spec / provision.runtime_config, installed by conftest
only while those modules are not in the tree yet. Remove once they land."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class KernelSpec:
    image: str
    cmdline: str = ""
    binary: str = "kernel"
    tar: str | None = "kernel.tar"
    ucode: str | None = None


@dataclass(frozen=True)
class ImageEntry:
    name: str
    image: str
    readonly: bool | None = None


@dataclass(frozen=True)
class FileEntry:
    path: str
    directory: bool = False
    symlink: str | None = None
    contents: str | None = None
    source: str | None = None
    metadata: str | None = None
    optional: bool = False
    mode: str | None = None
    uid: int | str | None = None
    gid: int | str | None = None


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    image: str | None = None
    readonly: bool = False
    format: str = "filesystem"
    platforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageSpec:
    kernel: KernelSpec | None = None
    init: tuple[str, ...] = ()
    onboot: tuple[ImageEntry, ...] = ()
    onshutdown: tuple[ImageEntry, ...] = ()
    services: tuple[ImageEntry, ...] = ()
    files: tuple[FileEntry, ...] = ()
    volumes: tuple[VolumeSpec, ...] = field(default_factory=tuple)


def load_spec(paths: Any) -> ImageSpec:
    from provision.errors import Problem, SpecError

    data: dict[str, Any] = {}
    for path in paths:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        for key, value in doc.items():
            if key == "kernel":
                data[key] = value
            else:
                data.setdefault(key, []).extend(value)
    unknown = set(data) - {"kernel", "init", "onboot", "onshutdown", "services", "files",
                           "volumes"}
    if unknown:
        raise SpecError([Problem(str(paths[0]), 1, 1, k, "unknown key") for k in unknown])
    kernel = data.get("kernel")
    return ImageSpec(
        kernel=KernelSpec(**kernel) if kernel else None,
        init=tuple(data.get("init", ())),
        onboot=tuple(ImageEntry(**e) for e in data.get("onboot", ())),
        onshutdown=tuple(ImageEntry(**e) for e in data.get("onshutdown", ())),
        services=tuple(ImageEntry(**e) for e in data.get("services", ())),
        files=tuple(FileEntry(**e) for e in data.get("files", ())),
        volumes=tuple(VolumeSpec(**e) for e in data.get("volumes", ())),
    )


def dump_spec(spec: ImageSpec) -> str:
    return str(yaml.safe_dump(asdict(spec), sort_keys=True))


def parse_image_config_label(text: str, image: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


@dataclass(frozen=True)
class RuntimeBundle:
    config: dict[str, Any]
    runtime: dict[str, Any]
    readonly: bool


def render_runtime_bundle(entry: ImageEntry, image_config: dict[str, Any], label: Any, *,
                          volumes: Any) -> RuntimeBundle:
    args = list(image_config.get("Entrypoint") or []) + list(image_config.get("Cmd") or [])
    readonly = entry.readonly if entry.readonly is not None else True
    config = {"ociVersion": "1.0.2", "process": {"args": args, "cwd": "/"},
              "root": {"path": "rootfs", "readonly": readonly},
              "annotations": {"label": json.dumps(label, sort_keys=True)} if label else {}}
    return RuntimeBundle(config, {}, readonly)


def install() -> None:
    spec = types.ModuleType("provision.spec")
    for name in ("KernelSpec", "ImageEntry", "FileEntry", "VolumeSpec", "ImageSpec",
                 "load_spec", "dump_spec", "parse_image_config_label"):
        setattr(spec, name, globals()[name])
    runtime = types.ModuleType("provision.runtime_config")
    runtime.RuntimeBundle = RuntimeBundle  # type: ignore[attr-defined]
    runtime.render_runtime_bundle = render_runtime_bundle  # type: ignore[attr-defined]
    sys.modules["provision.spec"] = spec
    sys.modules["provision.runtime_config"] = runtime
