"""Assembly: from a resolved spec and cached images, the root filesystem as a :class:`Tree`.

The root filesystem layout the build writes (LinuxKit's), in order:

1. ``boot/kernel``, ``boot/cmdline``, ``boot/ucode.cpio``; the kernel's modules tarball
   unpacked into ``/``;
2. the ``init`` images unpacked into ``/``, in order (each flattened first, then merged, so
   symlinks already in the root are followed inside it);
3. ``containers/onboot/NNN-name``, ``containers/onshutdown/NNN-name``,
   ``containers/services/name``: ``config.json`` and ``runtime.json`` (sorted-key JSON from
   :func:`provision.assemble.runtime_config.render_runtime_bundle`, given the container's role and
   the spec's container id map) with ``rootfs/`` (``readonly: true``) or ``lower/`` +
   ``tmp/`` (writable, LinuxKit's default);
4. ``containers/volumes/<name>/``: empty, the image's files (``format: filesystem``) or an OCI
   image layout of it (``format: oci``);
5. ``/dev/console`` and ``/dev/null`` (the kernel opens the console before ``/init`` runs);
6. the ``files`` entries;
7. ``/etc/provision/image.json``: ``{"digest": "sha256:...", "name": ...}``, the image digest
   the on-machine agent reports.

Device nodes are accepted only in ``init`` images (the base system); kernel, container and
volume images carrying one are refused as hostile.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from provision.assemble.dedupe import dedupe_container_files
from provision.assemble.layers import LayerOrigin, apply_layer, merge_tree, short_digest
from provision.assemble.runtime_config import assign_container_ids, render_runtime_bundle
from provision.assemble.tree import Node, NodeKind, PathEscape, Spool, Tree, TreeError, clean_path
from provision.errors import HostileInputError, ProvisionError, UsageError
from provision.fsutil import file_sha256
from provision.oci.model import Descriptor, ResolvedImage, canonical_json
from provision.spec.image import (
    FileEntry,
    ImageEntry,
    ImageSpec,
    VolumeSpec,
    dump_spec,
    parse_image_config_label,
    spec_to_dict,
)

LABEL = "org.mobyproject.config"
IMAGE_INFO_PATH = "etc/provision/image.json"
BOOT_FILES = ("boot/kernel", "boot/cmdline", "boot/ucode.cpio")
Progress = Callable[[str], None]


class ImageSource(Protocol):
    """What assembly reads from the image store."""

    def open_layer(self, desc: Descriptor) -> BinaryIO: ...

    def open_blob(self, digest: str) -> BinaryIO: ...


@dataclass(frozen=True)
class ImageUse:
    """One place the spec uses an image: its role (``kernel``, ``init``, ``onboot``, ...),
    the entry's name and the reference as written."""

    role: str
    name: str
    ref: str


def list_image_uses(spec: ImageSpec) -> list[ImageUse]:
    """Every image reference of ``spec``, in build order."""
    uses: list[ImageUse] = []
    if spec.kernel is not None:
        uses.append(ImageUse("kernel", "kernel", spec.kernel.image))
    uses.extend(ImageUse("init", ref, ref) for ref in spec.init)
    for role, entries in (
        ("onboot", spec.onboot),
        ("onshutdown", spec.onshutdown),
        ("services", spec.services),
    ):
        uses.extend(ImageUse(role, entry.name, entry.image) for entry in entries)
    uses.extend(ImageUse("volumes", vol.name, vol.image) for vol in spec.volumes if vol.image)
    return uses


def resolve_file_source(entry: FileEntry, base: Path | None) -> Path | None:
    """The host path of a ``files`` entry's ``source`` (``~/`` expanded; relative paths are
    relative to the first spec file's directory), or None when it has none."""
    if not entry.source:
        return None
    path = Path(os.path.expanduser(entry.source))
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def list_file_sources(spec: ImageSpec, base: Path | None) -> list[tuple[str, str]]:
    """(path in the image, sha256 of the host file) of every ``files`` source that exists:
    what :func:`compute_image_digest` covers besides the spec and the images."""
    found = []
    for entry in spec.files:
        path = resolve_file_source(entry, base)
        if path is not None and path.is_file():
            found.append((entry.path, file_sha256(path)[0]))
    return found


def compute_image_digest(
    spec: ImageSpec,
    images: Mapping[str, ResolvedImage],
    file_sources: Iterable[tuple[str, str]] = (),
) -> str:
    """sha256 over the canonical resolved spec, every input image's manifest digest (in build
    order) and the sha256 of every ``files`` source read from the host."""
    h = hashlib.sha256()
    h.update(b"provision-image-digest-v1\n")
    h.update(dump_spec(spec).encode())
    for use in list_image_uses(spec):
        h.update(f"\nimage {use.role} {use.name} {use.ref} {images[use.ref].digest}".encode())
    for path, digest in file_sources:
        h.update(f"\nsource {path} {digest}".encode())
    return "sha256:" + h.hexdigest()


_CREATED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def default_epoch(images: Iterable[ResolvedImage]) -> int:
    """SOURCE_DATE_EPOCH when set, else the newest ``created`` time of the input images,
    else 0. Either way the same inputs give the same value."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if value:
        if not value.isdigit():
            raise UsageError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {value!r}")
        return int(value)
    newest = 0
    for image in images:
        created = str(image.config.get("created") or "")
        if not _CREATED.match(created):
            continue
        try:
            stamp = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            continue
        if stamp.tzinfo is not None:
            newest = max(newest, int(stamp.timestamp()))
    return newest


@dataclass
class Assembler:
    """Builds the tree. ``images`` maps each reference as written to its resolved image."""

    spec: ImageSpec
    images: Mapping[str, ResolvedImage]
    source: ImageSource
    spool: Spool
    epoch: int
    name: str
    digest: str
    base: Path | None = None
    progress: Progress | None = None

    def __post_init__(self) -> None:
        self.tree = Tree(Node.directory(0o755, mtime=self.epoch))
        self._flat: dict[str, Tree] = {}
        self._ids = assign_container_ids(self.spec)

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    # -- generic helpers ------------------------------------------------------------------
    def dir_template(self) -> Node:
        return Node.directory(0o755, mtime=self.epoch)

    def put_bytes(
        self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> None:
        offset, size = self.spool.add_bytes(data)
        node = Node(NodeKind.FILE, mode, uid, gid, self.epoch, offset=offset, size=size)
        self.put(path, node)

    def put(self, path: str, node: Node) -> None:
        try:
            self.tree.put(path, node, parents=self.dir_template())
        except PathEscape as exc:
            raise ProvisionError(f"cannot write {path}: it escapes the root ({exc})") from None
        except TreeError as exc:
            raise ProvisionError(f"cannot write {path}: {exc}") from None

    def flatten(self, ref: str, *, allow_devices: bool) -> Tree:
        """The image's layers applied in order onto an empty tree (cached per digest; each
        use gets its own copy of the metadata, sharing spooled contents)."""
        image = self.images[ref]
        cached = self._flat.get(image.digest)
        if cached is not None:
            return copy_tree(cached)
        tree = Tree()
        for desc in image.layers:
            origin = LayerOrigin(ref, short_digest(desc.digest))
            with self.source.open_layer(desc) as stream:
                apply_layer(tree, stream, self.spool, origin, allow_devices=allow_devices)
        self._flat[image.digest] = tree
        return copy_tree(tree)

    def graft(self, path: str, subtree: Tree) -> None:
        """Hang ``subtree``'s root at ``path`` as a directory (nothing is resolved inside it:
        a container's symlinks belong to the container)."""
        parent_path, _, leaf = path.rpartition("/")
        parent = self.tree.mkdir_p(parent_path, 0o755, self.epoch)
        assert parent.children is not None
        root = subtree.root
        root.mode, root.uid, root.gid, root.mtime = 0o755, 0, 0, self.epoch
        parent.children[leaf] = root

    # -- phases ------------------------------------------------------------------------------
    def assemble(self) -> Tree:
        self.assemble_kernel()
        self.assemble_init()
        for role, entries in (
            ("onboot", self.spec.onboot),
            ("onshutdown", self.spec.onshutdown),
            ("services", self.spec.services),
        ):
            for index, entry in enumerate(entries):
                self.assemble_container(role, index, entry)
        for volume in self.spec.volumes:
            self.assemble_volume(volume)
        self.assemble_devices()
        for file_entry in self.spec.files:
            self.assemble_file(file_entry)
        info = {"digest": self.digest, "name": self.name}
        self.put_bytes(IMAGE_INFO_PATH, json.dumps(info, sort_keys=True, indent=2).encode() + b"\n")
        return self.tree

    def assemble_kernel(self) -> None:
        kernel = self.spec.kernel
        if kernel is None:
            return
        self.say(f"kernel {kernel.image}")
        image_tree = self.flatten(kernel.image, allow_devices=False)
        binary = _find_file(image_tree, kernel.binary or "kernel", kernel.image, "kernel binary")
        self.put("boot/kernel", _file_node(binary, 0o644, self.epoch))
        self.put_bytes("boot/cmdline", (kernel.cmdline or "").encode())
        if kernel.ucode:
            ucode = _find_file(image_tree, kernel.ucode, kernel.image, "ucode")
            self.put("boot/ucode.cpio", _file_node(ucode, 0o644, self.epoch))
        if kernel.tar:
            modules = _find_file(image_tree, kernel.tar, kernel.image, "modules tarball")
            origin = LayerOrigin(kernel.image, kernel.tar)
            apply_layer(
                self.tree, self.spool.open_range(modules.offset, modules.size), self.spool, origin
            )

    def assemble_init(self) -> None:
        for ref in self.spec.init:
            self.say(f"init {ref}")
            image_tree = self.flatten(ref, allow_devices=True)
            merge_tree(self.tree, image_tree, LayerOrigin(ref, "(flattened)"))

    def assemble_container(self, role: str, index: int, entry: ImageEntry) -> None:
        self.say(f"{role} {entry.name} ({entry.image})")
        image = self.images[entry.image]
        image_config = image.image_config
        labels = image_config.get("Labels") or {}
        label_text = labels.get(LABEL) if isinstance(labels, Mapping) else None
        if label_text is not None and not isinstance(label_text, str):
            raise HostileInputError(
                f"refused image {entry.image}: its {LABEL} label is "
                f"{type(label_text).__name__}, not a string"
            )
        label = parse_image_config_label(label_text, entry.image) if label_text else None
        bundle = render_runtime_bundle(
            entry, image_config, label, volumes=self.spec.volumes, role=role, id_map=self._ids
        )
        leaf = entry.name if role == "services" else f"{index:03d}-{entry.name}"
        base = f"containers/{role}/{leaf}"
        self.tree.mkdir_p(base, 0o755, self.epoch)
        self.put_bytes(f"{base}/config.json", _json(bundle.config))
        self.put_bytes(f"{base}/runtime.json", _json(bundle.runtime))
        rootfs = self.flatten(entry.image, allow_devices=False)
        if bundle.readonly:
            self.graft(f"{base}/rootfs", rootfs)
        else:
            self.graft(f"{base}/lower", rootfs)
            self.tree.mkdir_p(f"{base}/tmp", 0o755, self.epoch)

    def assemble_volume(self, volume: VolumeSpec) -> None:
        base = f"containers/volumes/{volume.name}"
        self.say(f"volume {volume.name}")
        if not volume.image:
            self.tree.mkdir_p(base, 0o755, self.epoch)
            return
        if (volume.format or "filesystem") == "oci":
            self.assemble_oci_volume(base, self.images[volume.image])
            return
        self.graft(base, self.flatten(volume.image, allow_devices=False))

    def assemble_oci_volume(self, base: str, image: ResolvedImage) -> None:
        """The image as an OCI image layout: oci-layout, index.json and its blobs."""
        self.tree.mkdir_p(base, 0o755, self.epoch)
        manifest = Descriptor(image.media_type, image.digest, image.size, {}, image.platform)
        self.put_bytes(f"{base}/oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest.to_json()],
        }
        self.put_bytes(f"{base}/index.json", canonical_json(index))
        digests = [image.digest, image.config_digest, *(d.digest for d in image.layers)]
        for digest in dict.fromkeys(digests):
            algorithm, _, hexpart = digest.partition(":")
            with self.source.open_blob(digest) as blob:
                offset = self.spool.size
                size = 0
                while chunk := blob.read(1 << 20):
                    self.spool.add_bytes(chunk)
                    size += len(chunk)
            node = Node(NodeKind.FILE, 0o644, 0, 0, self.epoch, offset=offset, size=size)
            self.put(f"{base}/blobs/{algorithm}/{hexpart}", node)

    def assemble_devices(self) -> None:
        self.tree.mkdir_p("dev", 0o755, self.epoch)
        for path, mode, rdev in (("dev/console", 0o600, (5, 1)), ("dev/null", 0o666, (1, 3))):
            if self.tree.lookup(path, follow=False) is None:
                self.put(path, Node(NodeKind.CHAR, mode, 0, 0, self.epoch, rdev=rdev))

    def assemble_file(self, entry: FileEntry) -> None:
        try:
            path = "/".join(clean_path(entry.path))
        except PathEscape:
            raise UsageError(f"files: {entry.path!r} leaves the image root") from None
        if not path:
            raise UsageError(f"files: {entry.path!r} names the image root")
        uid, gid = self.owner(entry.uid), self.owner(entry.gid, group=True)
        if entry.directory:
            mode = _mode(entry.mode, 0o700)
            node = Node(NodeKind.DIR, mode, uid, gid, self.epoch)
            self.put(path, node)
            return
        if entry.symlink:
            self.put(
                path, Node(NodeKind.SYMLINK, 0o777, uid, gid, self.epoch, target=entry.symlink)
            )
            return
        mode = _mode(entry.mode, 0o600)
        if entry.metadata:
            self.put_bytes(path, render_metadata(self.spec, entry.metadata), mode, uid, gid)
            return
        if entry.source:
            source = resolve_file_source(entry, self.base)
            assert source is not None
            if not source.exists() and entry.optional:
                return
            if not source.is_file():
                raise UsageError(f"files: {entry.path}: source {source} is not a readable file")
            offset = self.spool.size
            with open(source, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    self.spool.add_bytes(chunk)
            size = self.spool.size - offset
            self.put(
                path, Node(NodeKind.FILE, mode, uid, gid, self.epoch, offset=offset, size=size)
            )
            return
        contents = entry.contents or ""
        self.put_bytes(path, contents.encode(), mode, uid, gid)

    def owner(self, value: int | str | None, *, group: bool = False) -> int:
        """A numeric id; names are looked up in the assembled /etc/passwd or /etc/group."""
        if value is None or value == "":
            return 0
        if isinstance(value, int):
            return value
        if value.isdigit():
            return int(value)
        table = self.tree.lookup("etc/group" if group else "etc/passwd")
        if table is not None and table.kind is NodeKind.FILE:
            for line in (
                self.spool.read_range(table.offset, table.size)
                .decode(errors="replace")
                .splitlines()
            ):
                fields = line.split(":")
                if len(fields) > 2 and fields[0] == value and fields[2].isdigit():
                    return int(fields[2])
        raise UsageError(
            f"files: unknown {'group' if group else 'user'} {value!r}",
            hint="use a number, or a name from the image's /etc/passwd or /etc/group",
        )


def render_metadata(spec: ImageSpec, kind: str) -> bytes:
    """``metadata: yaml|json``: the resolved spec itself (:func:`dump_spec`, or
    :func:`spec_to_dict` as sorted-key JSON)."""
    if kind == "yaml":
        return dump_spec(spec).encode()
    return _json(spec_to_dict(spec))


def _json(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=2) + "\n").encode()


def _mode(value: int | str | None, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, int):
        return value & 0o7777
    return int(value, 8) & 0o7777


def _file_node(node: Node, mode: int, epoch: int) -> Node:
    return Node(NodeKind.FILE, mode, 0, 0, epoch, offset=node.offset, size=node.size)


def _find_file(tree: Tree, name: str, image: str, what: str) -> Node:
    node = tree.lookup(name)
    if node is None or node.kind is not NodeKind.FILE:
        raise ProvisionError(
            f"kernel image {image} has no {what} {name!r}",
            hint="set kernel.binary / kernel.tar (or tar: none) in the spec",
        )
    return node


def copy_tree(tree: Tree) -> Tree:
    """A copy with new nodes (hard links inside stay links) sharing the spooled contents."""
    copies: dict[int, Node] = {}

    def copy(node: Node) -> Node:
        seen = copies.get(id(node))
        if seen is not None:
            return seen
        new = Node(
            node.kind,
            node.mode,
            node.uid,
            node.gid,
            node.mtime,
            offset=node.offset,
            size=node.size,
            target=node.target,
            rdev=node.rdev,
            xattrs=node.xattrs,
        )
        copies[id(node)] = new
        return new

    result = Tree(copy(tree.root))
    stack = [(tree.root, result.root)]
    while stack:
        old, new = stack.pop()
        assert old.children is not None and new.children is not None
        for name, child in old.children.items():
            child_copy = copy(child)
            new.children[name] = child_copy
            if child.is_dir:
                stack.append((child, child_copy))
    return result


def assemble_root(
    spec: ImageSpec,
    images: Mapping[str, ResolvedImage],
    source: ImageSource,
    spool: Spool,
    *,
    epoch: int,
    name: str,
    digest: str,
    base: Path | None = None,
    progress: Progress | None = None,
    dedupe: bool = True,
) -> Tree:
    """The root filesystem of ``spec`` (see the module's docstring); with ``dedupe`` the
    identical files of the container roots are hard links (:mod:`provision.assemble.dedupe`)."""
    tree = Assembler(spec, images, source, spool, epoch, name, digest, base, progress).assemble()
    if dedupe:
        linked = dedupe_container_files(tree, spool, epoch=epoch)
        if progress is not None and linked.linked:
            progress(f"linked {linked.linked} identical files ({linked.saved_bytes} bytes)")
    return tree
