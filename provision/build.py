"""The build pipeline: spec -> images -> root tree -> kernel, initrd, rootfs tar -> formats.

1. choose the format writers and check every program they run (before any work);
2. load the spec (all problems at once) and resolve every image through the store (pulling
   per the policy);
3. compute the image digest and the epoch (SOURCE_DATE_EPOCH, else the newest ``created``
   of the input images, else 0);
4. assemble the root tree in a private work directory inside the output directory (contents
   spooled to one file there: memory does not grow with the image);
5. write what the chosen formats declare they need (``FormatWriter.needs``), and nothing
   else: the kernel, the initrd (microcode cpio + compressed newc cpio), the canonical root
   tar (``tar``, ``kernel+squashfs``, ``kernel+erofs`` only);
6. run each format writer into a staging directory, given only the inputs it declared; when
   ALL succeeded, write ``NAME.manifest.json`` beside them and publish them all at once
   (provision/publish.py: one generation directory, one switch; a killed build leaves the
   previous outputs complete). A failure at any step leaves no output (and removes the work
   directory).
"""

from __future__ import annotations

import filecmp
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provision.assemble.root import (
    BOOT_FILES,
    ImageSource,
    assemble_root,
    compute_image_digest,
    default_epoch,
    list_file_sources,
    list_image_uses,
)
from provision.assemble.tree import NodeKind, Spool, Tree
from provision.builders.base import BootInput, BootInputs, FormatOptions, FormatWriter
from provision.builders.cpio import write_cpio
from provision.builders.tar import write_tar
from provision.compress import CompressedWriter, Compression
from provision.errors import ProvisionError, UsageError
from provision.fsutil import HashingWriter, file_sha256
from provision.manifest import (
    BuildManifest,
    ImageRecord,
    SpecRecord,
    record_outputs,
    write_manifest,
)
from provision.oci.model import Platform, ResolvedImage
from provision.oci.pull import PullPolicy, ensure_image
from provision.oci.registry import RegistryClient
from provision.oci.store import ImageStore
from provision.publish import OutputSlot
from provision.runner import require_tools
from provision.spec.image import ImageSpec
from provision.spec.load import load_spec

DEFAULT_FORMATS = ("kernel+initrd",)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: output files (final paths), the manifest, the image digest."""

    name: str
    outputs: tuple[Path, ...]
    manifest: Path
    image_digest: str
    source_date_epoch: int


def available_writers() -> dict[str, FormatWriter]:
    """Every output format by its name (the one registry, builders/formats.py)."""
    from provision.builders.formats import FORMATS

    return dict(FORMATS)


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``kernel+initrd,tar`` or a list of names: unique, in the order given."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not names:
        raise UsageError("no output format given")
    return names


def select_writers(
    names: Sequence[str], registry: Mapping[str, FormatWriter] | None = None
) -> list[FormatWriter]:
    registry = registry if registry is not None else available_writers()
    unknown = [name for name in names if name not in registry]
    if unknown:
        raise UsageError(
            f"unknown output format{'s' if len(unknown) > 1 else ''}: " + ", ".join(unknown),
            hint="known: " + ", ".join(sorted(registry)),
        )
    return [registry[name] for name in names]


@dataclass
class _Build:
    """Run-time state of one build (kept apart from the frozen inputs and result)."""

    spec: ImageSpec
    store: ImageStore
    writers: list[FormatWriter]
    outdir: Path
    name: str
    pull: PullPolicy
    compression: Compression
    options: FormatOptions
    platform: Platform
    client: RegistryClient | None
    progress: Progress | None
    spec_files: tuple[Path, ...]
    dedupe: bool = True
    hashed: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def resolve_images(self) -> dict[str, ResolvedImage]:
        images: dict[str, ResolvedImage] = {}
        for use in list_image_uses(self.spec):
            if use.ref not in images:
                self.say(f"resolve {use.ref}")
                images[use.ref] = ensure_image(
                    self.store, use.ref, self.platform, pull=self.pull, client=self.client
                )
                check_image_platform(use.ref, images[use.ref], self.platform)
        return images

    def run(self) -> BuildResult:
        images = self.resolve_images()
        uses = list_image_uses(self.spec)
        epoch = default_epoch(images.values())
        base = self.spec_files[0].parent if self.spec_files else None
        digest = compute_image_digest(self.spec, images, list_file_sources(self.spec, base))
        slot = OutputSlot(self.outdir, self.name).open()  # the lock; stale work cleared
        assert slot.work is not None
        work = slot.work
        try:
            spool = Spool(work / "spool")
            try:
                source: ImageSource = self.store
                tree = assemble_root(
                    self.spec,
                    images,
                    source,
                    spool,
                    epoch=epoch,
                    name=self.name,
                    digest=digest,
                    base=base,
                    progress=self.progress,
                    dedupe=self.dedupe,
                )
                inputs = self.write_intermediates(tree, spool, work, epoch, digest)
            finally:
                spool.close()
            (work / "spool").unlink()
            staged = self.write_formats(inputs, work)
            manifest = BuildManifest(
                name=self.name,
                image_digest=digest,
                source_date_epoch=epoch,
                platform=str(self.platform),
                specs=tuple(SpecRecord(p.name, file_sha256(p)[0]) for p in self.spec_files),
                images=tuple(
                    ImageRecord(
                        u.role, u.name, u.ref, images[u.ref].digest, str(images[u.ref].platform)
                    )
                    for u in uses
                ),
                formats=tuple(w.name for w in self.writers),
                options={
                    "compress": str(self.compression),
                    "size": self.options.size,
                    "boot_size": self.options.boot_size,
                    "data_size": self.options.data_size,
                    "dedupe": self.dedupe,
                },
                outputs=record_outputs(staged, self.hashed),
            )
            staged_manifest = write_manifest(manifest, work / "out" / f"{self.name}.manifest.json")
            *outputs, path = self.publish(slot, [p for _fmt, p in staged] + [staged_manifest])
            return BuildResult(self.name, tuple(outputs), path, digest, epoch)
        finally:
            slot.close()  # removes the work directory

    def write_intermediates(
        self, tree: Tree, spool: Spool, work: Path, epoch: int, digest: str
    ) -> BootInputs:
        """Write the inputs the writers declared they need (each once, whoever asks)."""
        needs: frozenset[BootInput] = frozenset().union(*(w.needs for w in self.writers))
        kernel_path = work / "kernel" if BootInput.KERNEL in needs else None
        initrd_path = work / "initrd.img" if BootInput.INITRD in needs else None
        rootfs = work / "rootfs.tar" if BootInput.ROOTFS_TAR in needs else None
        cmdline = self.spec.kernel.cmdline if self.spec.kernel else ""
        if kernel_path is not None:
            kernel = tree.lookup("boot/kernel")
            if kernel is None or kernel.kind is not NodeKind.FILE:
                raise UsageError(
                    "the spec has no kernel, which "
                    + ", ".join(w.name for w in self.writers if BootInput.KERNEL in w.needs)
                    + " needs",
                    hint="add a kernel section, or build -f tar",
                )
            self.say("write kernel")
            with open(kernel_path, "wb") as out:
                for chunk in spool.iter_range(kernel.offset, kernel.size):
                    out.write(chunk)
        if initrd_path is not None:
            self.say(f"write initrd ({self.compression})")
            with open(initrd_path, "wb") as out:
                sink = HashingWriter(out)
                ucode = tree.lookup("boot/ucode.cpio")
                if ucode is not None and ucode.kind is NodeKind.FILE:
                    for chunk in spool.iter_range(ucode.offset, ucode.size):
                        sink.write(chunk)
                with CompressedWriter(sink, self.compression) as writer:
                    write_cpio(tree, spool, writer, epoch=epoch, exclude=BOOT_FILES)
            self.remember(initrd_path, sink)
        if rootfs is not None:
            self.say("write rootfs tar")
            with open(rootfs, "wb") as out:
                sink = HashingWriter(out)
                write_tar(tree, spool, sink, epoch=epoch)
            self.remember(rootfs, sink)
        return BootInputs(
            kernel=kernel_path,
            initrd=initrd_path,
            cmdline=cmdline,
            rootfs_tar=rootfs,
            digest=digest,
            source_date_epoch=epoch,
            name=self.name,
        )

    def remember(self, path: Path, sink: HashingWriter) -> None:
        st = path.stat()
        self.hashed[(st.st_dev, st.st_ino)] = (sink.digest, sink.size)

    def write_formats(self, inputs: BootInputs, work: Path) -> list[tuple[str, Path]]:
        staging = work / "out"
        staging.mkdir()
        staged: list[tuple[str, Path]] = []
        seen: dict[str, Path] = {}
        for writer in self.writers:
            self.say(f"format {writer.name}")
            dest = staging / writer.name.replace("/", "_")
            dest.mkdir()
            for path in writer.write(inputs.only(writer.needs), dest, self.options):
                if path.name in seen:  # NAME-kernel of kernel+initrd and kernel+squashfs: one file
                    if not filecmp.cmp(seen[path.name], path, shallow=False):
                        raise ProvisionError(f"two formats both write {path.name}, differently")
                    continue
                seen[path.name] = path
                staged.append((writer.name, path))
        return staged

    def publish(self, slot: OutputSlot, files: list[Path]) -> list[Path]:
        """Every output and the manifest at once: one switch (provision/publish.py)."""
        final = slot.publish(files)
        for target in final:
            self.say(f"wrote {target}")
        return final


def check_image_platform(ref: str, image: ResolvedImage, platform: Platform) -> None:
    """Refuse an image built for another platform than the build's (a single-platform image
    resolves whatever platform is asked for: without this, ``--platform bogus`` would build
    from the host's images). An image whose config names no architecture is let through."""
    if image.platform.architecture and not platform.matches(image.platform):
        raise UsageError(
            f"image {ref} does not provide platform {platform} (it is {image.platform})",
            hint="pass a --platform that every input image provides, or pull images built for it",
        )


def default_name(spec_files: Sequence[Path]) -> str:
    """The first spec file's name without its extension (``linuxkit.yml`` -> ``linuxkit``)."""
    if not spec_files:
        return "image"
    return spec_files[0].name.split(".")[0] or "image"


def build_image(
    spec: Sequence[str | os.PathLike[str]] | ImageSpec,
    *,
    store: ImageStore,
    formats: str | Sequence[str] = DEFAULT_FORMATS,
    outdir: str | os.PathLike[str] = ".",
    name: str | None = None,
    pull: PullPolicy = "missing",
    compress: Compression | None = None,
    size: int | None = None,
    boot_size: int | None = None,
    data_size: int | None = None,
    dedupe: bool = True,
    platform: Platform | None = None,
    client: RegistryClient | None = None,
    registry: Mapping[str, FormatWriter] | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Build ``spec`` (spec file paths, or an already loaded ImageSpec) into ``formats``.

    Raises SpecError / HostileInputError / UsageError (exit code 2), ToolMissingError before
    any work, ProvisionError otherwise. Outputs appear in ``outdir`` only when every format
    succeeded. ``boot_size`` fixes the disk formats' boot partition size, ``data_size`` adds
    their persistent data partition (:class:`FormatOptions`); ``dedupe=False`` keeps identical
    container files as separate copies."""
    writers = select_writers(parse_formats(formats), registry)
    require_tools(tool for writer in writers for tool in writer.tools())
    spec_files: tuple[Path, ...] = ()
    if isinstance(spec, ImageSpec):
        image_spec = spec
    else:
        spec_files = tuple(Path(p) for p in spec)
        if not spec_files:
            raise UsageError("no spec file given")
        image_spec = load_spec(spec_files)
    name = name or default_name(spec_files)
    if "/" in name or name.startswith(".") or not name:
        raise UsageError(f"invalid output name {name!r}")
    state = _Build(
        spec=image_spec,
        store=store,
        writers=writers,
        outdir=Path(outdir),
        name=name,
        pull=pull,
        compression=compress or Compression(),
        options=FormatOptions(size=size, boot_size=boot_size, data_size=data_size),
        platform=platform or Platform.host(),
        client=client,
        progress=progress,
        spec_files=spec_files,
        dedupe=dedupe,
    )
    return state.run()
