"""End-to-end builds: the root layout provision/assemble/root.py writes, reproducibility, the manifest,
all-or-nothing outputs, and hostile layers through ``provision build``."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from build_testkit import INIT, KERNEL_BYTES, SERVICE, offline_build_argv, write_test_images

from provision.build import build_image
from provision.builders.base import BootInput, BootInputs, BootMethod, FormatOptions, FormatWriter
from provision.cli import main
from provision.compress import parse_compression
from provision.errors import ProvisionError
from provision.manifest import file_sha256
from provision.oci.imagebuild import LayerEntry as E
from provision.oci.imagebuild import tar_layer_from_entries, write_image
from provision.oci.store import ImageStore
from provision.spec.image import dump_spec, spec_to_dict
from provision.spec.load import load_spec


def cpio_names(initrd: Path, tmp: Path) -> list[str]:
    data = initrd.read_bytes()
    assert data.startswith(b"070701")  # the microcode cpio comes first, uncompressed
    start = data.index(b"\x1f\x8b\x08")
    raw = tmp / "initrd.cpio"
    raw.write_bytes(gzip.decompress(data[start:]))
    out = subprocess.run(
        ["cpio", "-it", "--quiet", "-F", str(raw)], check=True, capture_output=True, text=True
    ).stdout
    return out.splitlines()


def test_build_writes_the_documented_layout(
    image_store: ImageStore, spec_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = build_image(
        [spec_file],
        store=image_store,
        outdir=out,
        formats="kernel+initrd,tar-kernel-initrd,tar",
        pull="never",
    )
    names = sorted(
        p.name for p in out.iterdir() if not p.name.startswith(".")
    )  # not the build's own
    assert names == [
        "machine-cmdline",
        "machine-initrd.img",
        "machine-initrd.tar",
        "machine-kernel",
        "machine.manifest.json",
        "machine.tar",
    ]
    assert (out / "machine-kernel").read_bytes() == KERNEL_BYTES
    assert (out / "machine-cmdline").read_text() == "console=ttyS0 quiet\n"
    listing = cpio_names(out / "machine-initrd.img", tmp_path)
    for expected in (
        "dev/console",
        "dev/null",
        "init",
        "bin/sh",
        "etc/provision/image.json",
        "lib/modules/6.1.0/kernel/virtio.ko",
        "containers/onboot/000-dhcpcd/config.json",
        "containers/onboot/000-dhcpcd/runtime.json",
        "containers/onboot/000-dhcpcd/rootfs/sbin/dhcpcd",
        "containers/services/web/config.json",
        "containers/services/web/rootfs/usr/bin/web",
        "containers/services/scratch/lower/sbin/dhcpcd",
        "containers/services/scratch/tmp",
        "containers/volumes/data",
        "etc/motd",
        "etc/web",
        "etc/link",
        "run/init.pid",
        "run/from-files",
        "opt/upper",
    ):
        assert expected in listing, expected
    # kernel, cmdline and microcode are split out of the initrd, as LinuxKit does
    assert "boot/kernel" not in listing and "boot/cmdline" not in listing
    # whiteouts and opaque directories of the init image were applied
    assert "tmp-old" not in listing and "opt/lower" not in listing
    assert listing == sorted(listing, key=lambda p: p.split("/"))

    with tarfile.open(out / "machine.tar") as tar:
        members = {m.name: m for m in tar}
        assert members["boot/kernel"].size == len(KERNEL_BYTES)
        assert members["bin/sh"].islnk() and members["bin/sh"].linkname == "bin/busybox"
        assert members["var/run"].issym() and members["var/run"].linkname == "/run"
        assert members["dev/console"].ischr()
        assert members["etc/web"].uid == 33 and members["etc/web"].mode == 0o700
        assert members["etc/motd"].mode == 0o644

        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            assert member is not None, name
            return member.read()

        config = json.loads(read("containers/services/web/config.json"))
        assert config["process"]["args"][:1] == ["/usr/bin/web"]
        assert config["root"] == {"path": "rootfs", "readonly": True}
        assert config["linux"]["cgroupsPath"] == "/provision/services/web"
        onboot = json.loads(read("containers/onboot/000-dhcpcd/config.json"))
        assert onboot["linux"]["cgroupsPath"] == "/provision/onboot/dhcpcd"
        scratch = json.loads(read("containers/services/scratch/config.json"))
        assert scratch["root"] == {"path": "rootfs"}  # writable unless readonly: true
        assert scratch["process"]["user"]["uid"] == 101  # uid: web -> web's container id
        image_info = json.loads(read("etc/provision/image.json"))
        spec_yaml, spec_json = read("etc/provision/spec.yml"), read("etc/provision/spec.json")
    assert image_info == {"digest": result.image_digest, "name": "machine"}
    spec = load_spec([spec_file])
    assert spec_yaml.decode() == dump_spec(spec)
    assert json.loads(spec_json) == spec_to_dict(spec)

    manifest = json.loads(result.manifest.read_text())
    assert manifest["image_digest"] == result.image_digest
    assert {i["ref"] for i in manifest["images"]} >= {SERVICE}
    assert all(i["digest"].startswith("sha256:") for i in manifest["images"])
    assert manifest["specs"][0]["file"] == "machine.yml"
    for record in manifest["outputs"]:
        digest, size = file_sha256(out / record["file"])
        assert (record["sha256"], record["size"]) == (digest, size)
    assert {r["file"] for r in manifest["outputs"]} == set(names) - {"machine.manifest.json"}
    with tarfile.open(out / "machine-initrd.tar") as tar:
        assert tar.getnames() == ["kernel", "initrd.img", "cmdline"]


@pytest.mark.parametrize("compress", ["gzip", "zstd", "xz"])
def test_two_builds_from_different_directories_and_times_are_identical(
    image_store: ImageStore,
    spec_file: Path,
    tmp_path: Path,
    compress: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results = []
    for attempt in ("a", "b"):
        cwd = tmp_path / f"cwd-{attempt}"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        relative = Path(os.path.relpath(spec_file, cwd))
        if attempt == "b":
            time.sleep(1.1)
            os.utime(spec_file)  # the spec file is newer, too
        result = build_image(
            [relative],
            store=image_store,
            outdir="out",
            formats="kernel+initrd,tar",
            pull="never",
            compress=parse_compression(compress),
        )
        results.append(
            {p.name: p.read_bytes() for p in (cwd / "out").iterdir() if not p.name.startswith(".")}
        )
        assert result.manifest.exists()
    assert results[0] == results[1]
    assert set(results[0]) == {
        "machine-kernel",
        "machine-initrd.img",
        "machine-cmdline",
        "machine.tar",
        "machine.manifest.json",
    }


def test_same_images_in_another_store_give_the_same_bytes(spec_file: Path, tmp_path: Path) -> None:
    outputs = []
    for attempt in ("one", "two"):
        store = ImageStore(tmp_path / f"store-{attempt}")
        write_test_images(store)
        result = build_image(
            [spec_file],
            store=store,
            outdir=tmp_path / attempt,
            formats="kernel+initrd",
            pull="never",
        )
        outputs.append(
            (result.image_digest, (tmp_path / attempt / "machine-initrd.img").read_bytes())
        )
    assert outputs[0] == outputs[1]


def test_source_date_epoch_clamps_every_mtime(
    image_store: ImageStore, spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    result = build_image(
        [spec_file], store=image_store, outdir=tmp_path / "o", formats="tar", pull="never"
    )
    assert result.source_date_epoch == 86400
    with tarfile.open(tmp_path / "o" / "machine.tar") as tar:
        assert {m.mtime for m in tar} == {0, 86400} or max(m.mtime for m in tar) == 86400
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    default = build_image(
        [spec_file], store=image_store, outdir=tmp_path / "d", formats="tar", pull="never"
    )
    assert default.source_date_epoch == 1_600_000_010  # newest created of the input images


class _FailingWriter:
    """A format that writes part of a file and then fails."""

    name = "fails-midway"
    files = (".half",)
    extension = ".half"
    boot: BootMethod | None = None
    needs = frozenset({BootInput.KERNEL, BootInput.INITRD})

    def tools(self) -> Sequence[str]:
        return ()

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        (dest / f"{inputs.name}.half").write_bytes(b"half written")
        raise ProvisionError("the disk writer failed")


def test_a_failing_format_leaves_nothing_behind(
    image_store: ImageStore, spec_file: Path, tmp_path: Path
) -> None:
    from provision.build import available_writers

    registry = {**available_writers(), "fails-midway": _FailingWriter()}
    out = tmp_path / "out"
    with pytest.raises(ProvisionError, match="disk writer failed"):
        build_image(
            [spec_file],
            store=image_store,
            outdir=out,
            pull="never",
            formats="kernel+initrd,tar,fails-midway",
            registry=registry,
        )
    assert list(out.iterdir()) == []


@dataclass(frozen=True)
class _RecordingWriter:
    """A format that writes the names of the inputs it was given."""

    name: str
    needs: frozenset[BootInput]
    seen: list[BootInputs] = field(default_factory=list, compare=False)
    boot: BootMethod | None = None

    @property
    def files(self) -> tuple[str, ...]:
        return (self.extension,)

    @property
    def extension(self) -> str:
        return f".{self.name}"

    def tools(self) -> Sequence[str]:
        return ()

    def write(self, inputs: BootInputs, dest: Path, options: FormatOptions) -> list[Path]:
        self.seen.append(inputs)
        out = dest / f"{inputs.name}{self.extension}"
        out.write_text(repr(sorted(inputs.__dict__.items())))
        return [out]


def _given(inputs: BootInputs) -> set[str]:
    files = {"kernel": inputs.kernel, "initrd": inputs.initrd, "rootfs-tar": inputs.rootfs_tar}
    return {name for name, path in files.items() if path is not None} | (
        {"cmdline"} if inputs.cmdline else set()
    )


def test_writers_get_only_the_inputs_they_declare(
    image_store: ImageStore, spec_file: Path, tmp_path: Path
) -> None:
    boot = _RecordingWriter(
        "boot", frozenset({BootInput.KERNEL, BootInput.INITRD, BootInput.CMDLINE})
    )
    root = _RecordingWriter("root", frozenset({BootInput.ROOTFS_TAR}))
    registry: dict[str, FormatWriter] = {"boot": boot, "root": root}
    build_image(
        [spec_file],
        store=image_store,
        outdir=tmp_path / "both",
        pull="never",
        formats="boot,root",
        registry=registry,
    )
    assert [_given(i) for i in boot.seen] == [{"kernel", "initrd", "cmdline"}]
    assert [_given(i) for i in root.seen] == [{"rootfs-tar"}]
    with pytest.raises(ProvisionError, match="no rootfs-tar was produced"):
        boot.seen[0].file(BootInput.ROOTFS_TAR)
    for fmt, writer, skipped in (
        ("boot", boot, "write rootfs tar"),
        ("root", root, "write initrd"),
    ):
        said: list[str] = []
        build_image(
            [spec_file],
            store=image_store,
            outdir=tmp_path / fmt,
            pull="never",
            formats=fmt,
            registry=registry,
            progress=said.append,
        )
        assert not [m for m in said if m.startswith(skipped)], said
        assert len(writer.seen) == 2
    assert not [m for m in said if m.startswith("write kernel")], said


def test_a_disk_build_writes_no_root_tar(
    image_store: ImageStore, spec_file: Path, tmp_path: Path
) -> None:
    said: list[str] = []
    result = build_image(
        [spec_file],
        store=image_store,
        outdir=tmp_path / "out",
        pull="never",
        formats="raw-efi",
        progress=said.append,
    )
    assert "write rootfs tar" not in said and "write kernel" in said, said
    assert [p.name for p in result.outputs] == ["machine-efi.img"]


HOSTILE_LAYERS = {
    "dotdot": [("../../etc/cron.d/evil", b"x")],
    "symlink-escape": [E.symlink("up", "../../.."), ("up/tmp/evil", b"x")],
    "hardlink-outside": [E.hardlink("shadow", "../../../etc/shadow")],
    "device-node": [E(path="dev/kmem", kind="char", devmajor=1, devminor=2)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
def test_hostile_service_image_exits_2_with_a_located_error_and_no_output(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ImageStore(tmp_path / "store")
    write_test_images(store)
    ref = "registry.example.test/hostile:1"
    layer = tar_layer_from_entries(HOSTILE_LAYERS[case])
    image = write_image(store, ref, [tar_layer_from_entries([("ok", b"fine")]), layer], {})
    spec = tmp_path / "hostile.yml"
    spec.write_text(f"services:\n  - name: bad\n    image: {ref}\n")
    out = tmp_path / "out"
    code = main(
        offline_build_argv(
            store,
            "-f",
            "tar",
            "-o",
            str(out),
            str(spec),
        )
    )
    err = capsys.readouterr().err
    assert code == 2
    line = err.splitlines()[0]
    assert line.startswith("provision: error: refused image " + ref)
    assert f"layer {image.layers[1].digest[:19]}" in line and "entry " in line
    assert not out.exists() or list(out.iterdir()) == []


def test_dry_run_prints_the_resolved_spec(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", "--dry-run", str(spec_file)]) == 0
    printed = capsys.readouterr().out
    assert "registry.example.test/web:1" in printed


def test_unknown_format_is_a_usage_error(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", "-f", "floppy", str(spec_file)]) == 2
    assert "unknown output format" in capsys.readouterr().err


def test_missing_image_without_pull_fails_cleanly(
    spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "build",
            "--cache",
            str(tmp_path / "empty"),
            "--pull",
            "never",
            "-o",
            str(out),
            str(spec_file),
        ]
    )
    assert code == 1
    assert "not in the cache" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_json_output(
    image_store: ImageStore, spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "build",
            "-q",
            "--json",
            "--cache",
            str(image_store.root),
            "--pull",
            "never",
            "-f",
            "kernel+initrd",
            "--name",
            "m2",
            "-o",
            str(tmp_path / "o"),
            str(spec_file),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["name"] == "m2" and result["image_digest"].startswith("sha256:")
    assert Path(result["manifest"]).name == "m2.manifest.json"
    assert io.BytesIO(Path(result["outputs"][0]).read_bytes()).read(4)


class _NeedsMissingTool(_FailingWriter):
    name = "needs-tool"

    def tools(self) -> Sequence[str]:
        return ["provision-no-such-program"]


def test_missing_tools_are_reported_before_any_work(spec_file: Path, tmp_path: Path) -> None:
    from provision.build import available_writers
    from provision.errors import ToolMissingError

    registry = {**available_writers(), "needs-tool": _NeedsMissingTool()}
    out = tmp_path / "never-created"
    with pytest.raises(ToolMissingError, match="provision-no-such-program"):
        build_image(
            [spec_file],
            store=ImageStore(tmp_path / "no-store"),
            outdir=out,
            formats="kernel+initrd,needs-tool",
            registry=registry,
        )
    assert not out.exists() and not (tmp_path / "no-store").exists()


def test_dry_run_prints_dump_spec_of_the_merged_files(
    spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.yml"
    extra.write_text(
        "services:\n  - name: extra\n    image: registry.example.test/web:1\n"
        "remove:\n  services: [scratch]\n"
    )
    assert (
        main(["build", "--dry-run", "-o", str(tmp_path / "out"), str(spec_file), str(extra)]) == 0
    )
    printed = capsys.readouterr().out
    assert printed == dump_spec(load_spec([spec_file, extra]))
    names = [s["name"] for s in yaml.safe_load(printed)["services"]]
    assert names == ["web", "extra"]
    assert not (tmp_path / "out").exists()


BAD_SPECS = {
    "located": "services:\n  - name: web\n    image: registry.example.test/web:1\n"
    "    capabilities: [CAP_NOT_REAL]\n    readonlyy: true\nfiles:\n  - path: /x\n",
    "alias-bomb": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n"
        for i in range(6)
    ),
    "not-a-mapping": "- just\n- a list\n",
    "python-tag": "kernel: !!python/object/apply:os.system [true]\n",
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_validate_and_build_report_the_same_located_errors(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.yml"
    spec.write_text(BAD_SPECS[case])
    out = tmp_path / "out"
    reports = []
    for argv in (
        ["validate", str(spec)],
        ["build", "-q", "--cache", str(tmp_path / "store"), "-o", str(out), str(spec)],
        ["build", "--dry-run", str(spec)],
    ):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == ""
        reports.append(captured.err)
    assert reports[0] == reports[1] == reports[2]
    assert f"{spec}:" in reports[0]
    assert not out.exists() and not (tmp_path / "store").exists()
    if case == "located":
        assert f"{spec}:4:20: services[0].capabilities[0]:" in reports[0]
        assert f"{spec}:5:5: services[0].readonlyy:" in reports[0]


def test_files_source_is_read_relative_to_the_spec_and_counts_in_the_digest(
    image_store: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "banner").write_text("one\n")
    spec = specs / "src.yml"
    spec.write_text(
        f'init:\n  - {INIT}\nfiles:\n  - path: etc/banner\n    source: banner\n    mode: "0640"\n'
    )
    monkeypatch.chdir(tmp_path)  # not the spec's directory
    digests = []
    for text in ("one\n", "two\n"):
        (specs / "banner").write_text(text)
        out = tmp_path / text.strip()
        result = build_image([spec], store=image_store, outdir=out, formats="tar", pull="never")
        with tarfile.open(out / "src.tar") as tar:
            member = tar.getmember("etc/banner")
            handle = tar.extractfile(member)
            assert handle is not None and handle.read() == text.encode()
            assert member.mode == 0o640
        digests.append(result.image_digest)
    assert digests[0] != digests[1]
