"""Identical files of the container roots stored once, as hard links.

Every container image carries its own busybox, libc and so on; the initrd (and the root tar)
would store each copy. :func:`dedupe_container_files` makes the tree's identical files one
:class:`~provision.assemble.tree.Node` with several names, which the cpio and tar writers already
write as hard links: the cpio carries the data once (with the last name), the tar links the
later names to the first. The root tar feeding squashfs / erofs and the ``tar`` output
therefore carry the same links as the initrd.

Which files, and why it is safe (a hard link shares the inode: a write through one name is
seen through every other):

- only regular files (not empty) whose every name lies in a container root,
  ``containers/{onboot,onshutdown,services}/NAME/{rootfs,lower}/...``. The host root (init
  images, kernel modules, ``files`` entries, ``/etc/provision``) and volumes
  (``containers/volumes``) are never linked: init scripts and services write there.
  One exception: the program ``/sbin/init`` resolves to in the host root, when it is an
  ELF executable (provision's init: busybox), is linked with the container files equal to
  it. The machine's pid 1 runs that file from the first instruction of init to power-off,
  and the kernel refuses to open a file a process executes for writing (``ETXTBSY``), so
  nothing on the machine can change it in place (a new file renamed over it gets a new
  inode and leaves the containers' name alone). It is the one host file every image
  shares with its containers, and linking it saves a copy (2 MB for busybox) that the
  kernel would otherwise unpack at every boot.
  At boot those roots are only read: init runs from the initramfs itself (links stay
  links); a writable container runs on an overlay of ``lower/`` with a tmpfs
  upper (a write copies the file up, the shared lower file is untouched; without overlayfs
  init copies ``lower/`` with ``cp -a`` into a tmpfs of its own); a read-only container's
  ``rootfs/`` is mounted read-only.
- except what a writable bind could expose: every ``bind``/``rbind`` mount without ``ro``
  in any container's ``config.json`` or ``runtime.json`` names a host path; that path
  (as written, and resolved through the symlinks of the assembled root) and everything
  under it is left alone. A bind of ``/`` or ``/containers`` (sshd binds ``/containers``)
  therefore turns linking off for every container root under it. A relative source counts
  from its bundle, as runc reads it. Not covered: a container that reaches the host root
  another way (``/proc/1/root`` with the host's pid namespace and ``CAP_SYS_PTRACE``,
  mounting with ``CAP_SYS_ADMIN``) can change every container's files anyway; with links a
  write in place through one name changes them all.
- files are linked only when their content (sha256 taken while spooling) AND the metadata a
  link shares are equal: mode (with setuid bits), uid, gid, mtime as written (clamped to
  ``[0, epoch]``) and extended attributes.

Deterministic: the tree is walked in its sorted order and the first node of each group is
kept, so the same inputs give the same links and the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from provision.assemble.tree import Node, NodeKind, PathEscape, Spool, Tree, TreeError, clean_path

CONTAINER_ROLES = ("onboot", "onshutdown", "services")
ROOT_DIRS = ("rootfs", "lower")
BUNDLE_FILES = ("config.json", "runtime.json")

Parts = tuple[str, ...]
_Key = tuple[bytes, int, int, int, int, int, tuple[tuple[str, bytes], ...]]


@dataclass(frozen=True)
class DedupeResult:
    """What linking did: names that now share an earlier name's data, the bytes those names
    no longer store, and the host paths left alone because a writable bind exposes them."""

    linked: int
    saved_bytes: int
    exposed: tuple[str, ...]


def dedupe_container_files(tree: Tree, spool: Spool, *, epoch: int) -> DedupeResult:
    """Link the identical regular files of the container roots of ``tree`` (see the
    module's docstring for which files and why)."""
    exposed = list_exposed_paths(tree, spool)
    names = [
        (parent, name, node, parts)
        for parent, name, node, parts in _walk_roots(tree)
        if not _is_exposed(parts, exposed)
    ]
    inside: dict[int, int] = {}
    for _parent, _name, node, _parts in names:
        inside[id(node)] = inside.get(id(node), 0) + 1
    everywhere = tree.link_counts()
    keep: dict[_Key, Node] = {}
    init_program = _init_program(tree, spool, exposed)
    if init_program is not None:  # first: the container names become links of it
        keep[_link_key(init_program, spool, epoch)] = init_program
    merged: set[int] = set()
    linked = saved = 0
    for parent, name, node, _parts in names:
        if everywhere.get(id(node)) != inside[id(node)]:
            continue  # a name of it lies outside the container roots, or is exposed
        key = _link_key(node, spool, epoch)
        first = keep.setdefault(key, node)
        if first is node:
            continue
        assert parent.children is not None
        parent.children[name] = first
        linked += 1
        if id(node) not in merged:
            merged.add(id(node))
            saved += node.size
    return DedupeResult(linked, saved, tuple("/" + "/".join(p) for p in sorted(exposed)))


def _init_program(tree: Tree, spool: Spool, exposed: list[Parts]) -> Node | None:
    """The host file ``/sbin/init`` resolves to, when it is a non-empty ELF file and no
    writable bind exposes any of its names (else None)."""
    node = tree.lookup("/sbin/init")
    if node is None or node.kind is not NodeKind.FILE or node.size < 4:
        return None
    if spool.read_range(node.offset, 4) != b"\x7fELF":
        return None
    for path, other in tree.walk():
        if other is node and _is_exposed(tuple(path.split("/")), exposed):
            return None
    return node


def _link_key(node: Node, spool: Spool, epoch: int) -> _Key:
    xattrs = tuple(sorted(node.xattrs.items())) if node.xattrs else ()
    return (
        spool.content_digest(node.offset, node.size),
        node.size,
        node.mode,
        node.uid,
        node.gid,
        min(max(node.mtime, 0), epoch),
        xattrs,
    )


def _walk_roots(tree: Tree) -> Iterator[tuple[Node, str, Node, Parts]]:
    """(directory, name, node, path) of every non-empty regular file under a container root,
    in sorted order."""
    for bundle_parts, bundle in _walk_bundles(tree):
        for root_name in ROOT_DIRS:
            root = _child_dir(bundle, root_name)
            if root is not None:
                yield from _walk_files(root, (*bundle_parts, root_name))


def _walk_bundles(tree: Tree) -> Iterator[tuple[Parts, Node]]:
    """(path, directory) of every container bundle (containers/ROLE/NAME), in sorted order."""
    containers = tree.root.children.get("containers") if tree.root.children else None
    for role in CONTAINER_ROLES:
        role_dir = _child_dir(containers, role)
        if role_dir is None:
            continue
        assert role_dir.children is not None
        for leaf in sorted(role_dir.children):
            bundle = _child_dir(role_dir, leaf)
            if bundle is not None:
                yield ("containers", role, leaf), bundle


def _child_dir(directory: Node | None, name: str) -> Node | None:
    if directory is None or directory.children is None:
        return None
    child = directory.children.get(name)
    return child if child is not None and child.is_dir else None


def _walk_files(top: Node, top_parts: Parts) -> Iterator[tuple[Node, str, Node, Parts]]:
    stack: list[tuple[Node, Parts]] = [(top, top_parts)]
    while stack:
        directory, parts = stack.pop()
        assert directory.children is not None
        subdirs: list[tuple[Node, Parts]] = []
        for name in sorted(directory.children):
            node = directory.children[name]
            if node.is_dir:
                subdirs.append((node, (*parts, name)))
            elif node.kind is NodeKind.FILE and node.size > 0:
                yield directory, name, node, (*parts, name)
        stack.extend(reversed(subdirs))


def _is_exposed(parts: Parts, exposed: list[Parts]) -> bool:
    return any(parts[: len(prefix)] == prefix for prefix in exposed)


def list_exposed_paths(tree: Tree, spool: Spool) -> list[Parts]:
    """The host paths some container may write through a bind (each as written and as
    resolved in ``tree``); ``()`` (the whole root) when a bundle cannot be read."""
    exposed: set[Parts] = set()
    for bundle, node in _list_bundle_files(tree):
        try:
            document = json.loads(spool.read_range(node.offset, node.size))
        except ValueError:
            return [()]
        for source in _writable_bind_sources(document):
            if not source.startswith("/"):  # runc: relative to the bundle
                source = "/".join(("", *bundle, source))
            exposed.update(_spellings(tree, source))
    return sorted(exposed)


def _list_bundle_files(tree: Tree) -> Iterator[tuple[Parts, Node]]:
    """(bundle directory, file) of every container's config.json and runtime.json."""
    for bundle_parts, bundle in _walk_bundles(tree):
        assert bundle.children is not None
        for name in BUNDLE_FILES:
            node = bundle.children.get(name)
            if node is not None and node.kind is NodeKind.FILE:
                yield bundle_parts, node


def _writable_bind_sources(document: Any) -> Iterator[str]:
    mounts = document.get("mounts") if isinstance(document, dict) else None
    for mount in mounts if isinstance(mounts, list) else ():
        if not isinstance(mount, dict):
            continue
        options = mount.get("options") or []
        options = [str(o) for o in options] if isinstance(options, list) else []
        is_bind = mount.get("type") == "bind" or "bind" in options or "rbind" in options
        if is_bind and "ro" not in options:
            yield str(mount.get("source") or "/")


def _spellings(tree: Tree, source: str) -> set[Parts]:
    """``source`` cleaned lexically and resolved through the tree's symlinks."""
    try:
        found = {tuple(clean_path(source))}
    except PathEscape:
        return {()}
    parts = list(next(iter(found)))
    for end in range(len(parts), 0, -1):  # the longest prefix that exists at build time
        try:
            located = tree.locate(parts[:end], follow_last=True)
        except PathEscape:
            return {()}
        except TreeError:
            continue
        found.add((*(located.parts if located is not None else ()), *parts[end:]))
        break
    return found
