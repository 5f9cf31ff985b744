"""How an artifact argument is turned into a boot method, and the QEMU command line for it."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from provision.builders.base import BootInputs, FormatOptions, FormatWriter
from provision.builders.cloud import write_gcp_tarball
from provision.builders.formats import FORMATS, WRITERS
from provision.errors import ProvisionError, UsageError
from provision.manifest import BuildManifest, SpecRecord, record_outputs, write_manifest
from provision.providers.qemu.artifact import (
    BootKind,
    check_bootable,
    resolve_artifact,
    unpack_source,
)
from provision.providers.qemu.vm import (
    DiskSpec,
    PortMapping,
    VMConfig,
    parse_disk,
    parse_publish,
    plan_qemu_argv,
)


def kernel_output(directory: Path, name: str = "web", cmdline: str | None = "quiet") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}-kernel").write_bytes(b"kernel")
    (directory / f"{name}-initrd.img").write_bytes(b"initrd")
    if cmdline is not None:
        (directory / f"{name}-cmdline").write_text(cmdline + "\n")
    return directory / name


def test_prefix_resolves_to_direct_kernel_boot(tmp_path: Path) -> None:
    prefix = kernel_output(tmp_path / "out")
    source = resolve_artifact(prefix)
    assert source.kind is BootKind.KERNEL
    assert source.path == tmp_path / "out" / "web-kernel"
    assert source.initrd == tmp_path / "out" / "web-initrd.img"
    assert source.cmdline == "quiet"
    assert source.label == "web"
    assert resolve_artifact(tmp_path / "out" / "web-kernel") == source
    assert resolve_artifact(tmp_path / "out") == source  # the only kernel in the directory


def test_kernel_without_its_initrd_is_named(tmp_path: Path) -> None:
    prefix = kernel_output(tmp_path)
    (tmp_path / "web-initrd.img").unlink()
    with pytest.raises(UsageError, match="web-initrd.img") as caught:
        resolve_artifact(prefix)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("file_name", "kind", "driver", "efi"),
    [
        ("web.iso", BootKind.CDROM, "raw", False),
        ("web-efi.iso", BootKind.CDROM, "raw", True),
        ("web-efi-initrd.iso", BootKind.CDROM, "raw", True),
        ("web-bios.img", BootKind.DISK, "raw", False),
        ("web-efi.img", BootKind.DISK, "raw", True),
        ("web.raw", BootKind.DISK, "raw", False),
        ("web.qcow2", BootKind.DISK, "qcow2", False),
        ("web-efi.qcow2", BootKind.DISK, "qcow2", True),
        ("web.vhd", BootKind.DISK, "vpc", False),
        ("web-dynamic.vhd", BootKind.DISK, "vpc", False),
        ("web.vmdk", BootKind.DISK, "vmdk", False),
    ],
)
def test_image_files_by_extension(
    tmp_path: Path, file_name: str, kind: BootKind, driver: str, efi: bool
) -> None:
    (tmp_path / file_name).write_bytes(b"\0" * 512)
    for given in (tmp_path / file_name, tmp_path / "web"):  # the file, or the build prefix
        source = resolve_artifact(given)
        assert (source.kind, source.disk_format, source.efi) == (kind, driver, efi)
        assert source.path == tmp_path / file_name


def test_prefix_naming_several_images_asks_which(tmp_path: Path) -> None:
    (tmp_path / "web.iso").write_bytes(b"iso")
    (tmp_path / "web.qcow2").write_bytes(b"qcow2")
    with pytest.raises(UsageError, match="several artifacts"):
        resolve_artifact(tmp_path / "web")


def test_build_manifest_directory_prefers_kernel_and_initrd(tmp_path: Path) -> None:
    kernel_output(tmp_path, cmdline="console=ttyS0")
    (tmp_path / "web-efi.raw").write_bytes(b"raw")
    outputs = record_outputs(
        [
            ("raw-efi", tmp_path / "web-efi.raw"),
            ("kernel+initrd", tmp_path / "web-kernel"),
            ("kernel+initrd", tmp_path / "web-initrd.img"),
            ("kernel+initrd", tmp_path / "web-cmdline"),
        ]
    )
    manifest = BuildManifest(
        name="web",
        image_digest="sha256:" + "0" * 64,
        source_date_epoch=0,
        platform="linux/amd64",
        specs=(SpecRecord("web.yml", "sha256:" + "1" * 64),),
        images=(),
        formats=("raw-efi", "kernel+initrd"),
        outputs=outputs,
    )
    write_manifest(manifest, tmp_path / "web.manifest.json")
    source = resolve_artifact(tmp_path)
    assert source.kind is BootKind.KERNEL
    assert (source.path, source.cmdline) == (tmp_path / "web-kernel", "console=ttyS0")
    assert resolve_artifact(tmp_path / "web.manifest.json") == source


def test_manifest_with_only_an_efi_disk_boots_it_with_efi(tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(b"raw")
    (tmp_path / "web.manifest.json").write_text(
        json.dumps({"outputs": [{"format": "raw-efi", "path": "disk.img"}]})
    )
    source = resolve_artifact(tmp_path / "web.manifest.json")
    assert (source.kind, source.disk_format, source.efi) == (BootKind.DISK, "raw", True)


def test_missing_artifact_raises_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="artifact not found") as caught:
        resolve_artifact(tmp_path / "nothing")
    assert caught.value.exit_code == 2


def test_plan_for_uefi_disk_with_ports_data_and_disks(tmp_path: Path) -> None:
    (tmp_path / "web.qcow2").write_bytes(b"q")
    config = VMConfig(
        name="web",
        artifact=tmp_path / "web.qcow2",
        mem_mib=512,
        cpus=2,
        publish=(PortMapping(8080, 80), PortMapping(5353, 53, "udp")),
        data=b"x",
        disks=(DiskSpec(tmp_path / "data.vmdk"),),
        uefi=True,
        isolated=True,
    )
    state = tmp_path / "state" / "vms" / "web"
    argv = plan_qemu_argv(
        config, resolve_artifact(config.artifact), accel="tcg", state_dir=state, detach=True
    )
    joined = " ".join(argv)
    assert argv[argv.index("-machine") + 1] == "q35"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert tuple(argv[argv.index("-m") : argv.index("-m") + 2]) == ("-m", "512")
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd" in argv
    assert f"if=pflash,format=raw,unit=1,file={state}/OVMF_VARS.fd" in argv
    assert (
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53"
        in argv
    )
    assert f"file={tmp_path}/web.qcow2,format=qcow2,if=none,id=boot0,snapshot=on" in argv
    assert f"file={tmp_path}/data.vmdk,format=vmdk,if=none,id=disk1" in argv
    assert "scsi-cd,drive=cidata,bus=scsi0.0" in argv
    assert f"file,id=console,path={state}/serial.log" in joined
    assert "-kernel" not in argv


def test_plan_escapes_commas_in_paths(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    odd.mkdir()
    (odd / "web.iso").write_bytes(b"iso")
    config = VMConfig(name="web", artifact=odd / "web.iso")
    argv = plan_qemu_argv(
        config, resolve_artifact(config.artifact), accel="kvm", state_dir=tmp_path, detach=False
    )
    assert (
        f"file={tmp_path}/a,,b/web.iso,format=raw,if=none,id=boot0,media=cdrom,readonly=on" in argv
    )
    assert argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-machine") + 1] == "q35"  # BIOS too (a static _PRT)
    assert "ide-cd,drive=boot0,bootindex=0" in argv and "scsi-cd,drive=cidata,bus=scsi0.0" in argv


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8080:80", PortMapping(8080, 80)), ("53:53/udp", PortMapping(53, 53, "udp"))],
)
def test_parse_publish(text: str, expected: PortMapping) -> None:
    assert parse_publish(text) == expected


@pytest.mark.parametrize("text", ["80", "0:80", "8080:80/sctp", "70000:80", "a:b"])
def test_parse_publish_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_publish(text)


def test_parse_disk() -> None:
    assert parse_disk("d.img") == DiskSpec(Path("d.img"))
    assert parse_disk("d.vhd,format=vhd,size=1G") == DiskSpec(Path("d.vhd"), "vpc", "1G")
    assert DiskSpec(Path("x.qcow2")).driver == "qcow2"
    with pytest.raises(UsageError):
        parse_disk("d.img,bogus=1")


def test_kernel_with_a_squashfs_root_and_no_initrd(tmp_path: Path) -> None:
    (tmp_path / "web-kernel").write_bytes(b"kernel")
    (tmp_path / "web-squashfs.img").write_bytes(b"hsqs")
    (tmp_path / "web-cmdline").write_text("root=/dev/vda ro\n")
    source = resolve_artifact(tmp_path / "web-squashfs.img")
    assert (source.kind, source.initrd) == (BootKind.KERNEL, None)
    assert source.root_image == tmp_path / "web-squashfs.img"
    assert resolve_artifact(tmp_path / "web") == source
    config = VMConfig(name="web", artifact=tmp_path / "web")
    argv = plan_qemu_argv(config, source, accel="tcg", state_dir=tmp_path, detach=True)
    assert "-initrd" not in argv
    assert f"file={tmp_path}/web-squashfs.img,format=raw,if=none,id=root0,readonly=on" in argv
    assert argv[argv.index("-append") + 1] == "root=/dev/vda ro console=ttyS0"


@pytest.mark.parametrize("file_name", ["web.tar", "root.tar"])
def test_the_root_tar_does_not_boot(tmp_path: Path, file_name: str) -> None:
    (tmp_path / file_name).write_bytes(b"x")
    with pytest.raises(UsageError, match="tar output, which does not boot"):
        resolve_artifact(tmp_path / file_name)


@pytest.mark.parametrize("file_name", ["web.tar.xz", "web-initrd.img.gz", "web.tgz"])
def test_other_archives_are_refused(tmp_path: Path, file_name: str) -> None:
    (tmp_path / file_name).write_bytes(b"x")
    with pytest.raises(UsageError, match="archive"):
        resolve_artifact(tmp_path / file_name)


@pytest.mark.parametrize(
    "writer",
    [w for w in WRITERS if w.boot is not None and w.boot.kind != "kernel"],
    ids=lambda w: w.name,
)
def test_every_image_format_resolves_as_it_declares(tmp_path: Path, writer: FormatWriter) -> None:
    method = writer.boot
    assert method is not None
    (tmp_path / f"web{writer.extension}").write_bytes(b"\0" * 512)
    for given in (tmp_path / f"web{writer.extension}", tmp_path / "web"):
        source = resolve_artifact(given)
        assert (source.kind.value, source.efi, source.unpack) == (
            method.kind,
            method.firmware == "efi",
            method.unpack,
        )
        assert source.disk_format == method.disk_format
        assert source.label == "web"


def write_tar_kernel_initrd(directory: Path, cmdline: str = "panic=-1 quiet") -> Path:
    inputs = BootInputs(
        kernel=directory / "k",
        initrd=directory / "i",
        cmdline=cmdline,
        rootfs_tar=None,
        digest="sha256:" + "0" * 64,
        source_date_epoch=0,
        name="web",
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "k").write_bytes(b"kernel-bytes")
    (directory / "i").write_bytes(b"initrd-bytes")
    (out,) = FORMATS["tar-kernel-initrd"].write(inputs, directory, FormatOptions())
    return out


def test_tar_kernel_initrd_boots_its_unpacked_kernel(tmp_path: Path) -> None:
    archive = write_tar_kernel_initrd(tmp_path / "out")
    assert archive.name == "web-initrd.tar"
    source = resolve_artifact(archive)
    assert (source.kind, source.path, source.cmdline, source.label) == (
        BootKind.KERNEL,
        archive,
        "panic=-1 quiet",
        "web",
    )
    assert resolve_artifact(tmp_path / "out" / "web") == source  # the build prefix
    config = VMConfig(name="web", artifact=archive)
    state = tmp_path / "state"
    with pytest.raises(ProvisionError, match="unpack it first"):
        plan_qemu_argv(config, source, accel="tcg", state_dir=state, detach=True)
    state.mkdir()
    unpacked = unpack_source(source, state)
    assert (unpacked.path.read_bytes(), unpacked.initrd) == (b"kernel-bytes", state / "initrd.img")
    assert unpacked.initrd is not None and unpacked.initrd.read_bytes() == b"initrd-bytes"
    argv = plan_qemu_argv(config, unpacked, accel="tcg", state_dir=state, detach=True)
    assert argv[argv.index("-kernel") + 1] == str(state / "kernel")
    assert argv[argv.index("-initrd") + 1] == str(state / "initrd.img")
    assert argv[argv.index("-append") + 1] == "panic=-1 quiet console=ttyS0"


def test_an_archive_without_the_boot_files_is_named(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "web-initrd.tar", "w") as tar:
        info = tarfile.TarInfo("kernel")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UsageError, match="holds no initrd.img, cmdline"):
        resolve_artifact(tmp_path / "web-initrd.tar")
    with tarfile.open(tmp_path / "odd-initrd.tar", "w") as tar:  # the kernel a link elsewhere
        link = tarfile.TarInfo("kernel")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
        for name in ("initrd.img", "cmdline"):
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    with pytest.raises(UsageError, match="holds no kernel$"):
        resolve_artifact(tmp_path / "odd-initrd.tar")


def test_gcp_tarball_boots_its_unpacked_sparse_disk(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * 1024 * 1024)
        f.write(b"\x55\xaa" * 256)
    archive = tmp_path / "web.img.tar.gz"
    write_gcp_tarball(raw, archive, 0)
    source = resolve_artifact(archive)
    assert (source.kind, source.disk_format, source.efi, source.unpack) == (
        BootKind.DISK,
        "raw",
        False,
        ("disk.raw",),
    )
    state = tmp_path / "state"
    state.mkdir()
    unpacked = unpack_source(source, state)
    assert unpacked.path == state / "disk.raw" and unpacked.unpack == ()
    assert unpacked.path.read_bytes() == raw.read_bytes()
    assert unpacked.path.stat().st_blocks * 512 < 1024 * 1024  # the holes stayed holes
    argv = plan_qemu_argv(
        VMConfig(name="web", artifact=archive), unpacked, accel="tcg", state_dir=state, detach=True
    )
    assert f"file={state}/disk.raw,format=raw,if=none,id=boot0,snapshot=on" in argv


def test_files_that_cannot_boot_are_refused_before_qemu_starts(tmp_path: Path) -> None:
    disk = tmp_path / "web.raw"
    disk.write_bytes(b"\0" * 1024)  # QEMU would sit in the firmware's boot loop
    with pytest.raises(UsageError, match="not a bootable disk image"):
        check_bootable(resolve_artifact(disk))
    disk.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * 512)
    check_bootable(resolve_artifact(disk))
    iso = tmp_path / "web.iso"
    iso.write_bytes(b"")
    with pytest.raises(UsageError, match="is empty"):
        check_bootable(resolve_artifact(iso))
    iso.unlink()
    os.mkfifo(iso)
    with pytest.raises(UsageError, match="not found"):  # a FIFO would block QEMU's open
        check_bootable(resolve_artifact(iso))
