"""How an artifact argument is turned into a boot method, and the QEMU command line for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.errors import UsageError
from provision.manifest import BuildManifest, SpecRecord, record_outputs, write_manifest
from provision.providers.qemu.artifact import BootKind, resolve_artifact
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
    assert argv[argv.index("-machine") + 1] == "pc"


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


@pytest.mark.parametrize("file_name", ["web.img.tar.gz", "web-initrd.tar", "web.tar"])
def test_archives_are_refused(tmp_path: Path, file_name: str) -> None:
    (tmp_path / file_name).write_bytes(b"x")
    with pytest.raises(UsageError, match="archive"):
        resolve_artifact(tmp_path / file_name)
