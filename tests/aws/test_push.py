"""``provision push aws``: EBS direct upload, resume, AMI fields, reuse by digest, copies and
shares, faults, against moto in server mode (extended as AWS documents, behind a fault layer:
tests/aws/aws_push_testkit.py). Every result is read back through the API."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_push_testkit
import boto3
import pytest
from aws_push_testkit import (
    CONCURRENT_LIMIT,
    THROTTLED_EBS,
    THROTTLED_EC2,
    UNAVAILABLE,
    Fault,
    PushMoto,
)
from aws_testkit import REGION, SECRET_MARKER

from provision.cli import main

moto_push_server = aws_push_testkit.moto_push_server  # the fixtures
aws_push = aws_push_testkit.aws_push

BLOCK = 512 * 1024
ROOT = Path(__file__).resolve().parents[2]
DIGEST_TAG = "provision-image-digest"


def make_build(
    tmp_path: Path,
    blocks: dict[int, bytes],
    size: int,
    *,
    name: str = "web",
    platform: str = "linux/amd64",
    fmt: str = "aws",
    salt: str = "",
    digest: str | None = None,
) -> tuple[Path, str]:
    """A build directory as ``provision build`` leaves it: a sparse raw disk with ``blocks``
    written at their indices, and NAME.manifest.json naming it."""
    out = tmp_path / f"out{salt}"
    out.mkdir()
    disk = out / f"{name}.raw"
    with disk.open("wb") as f:
        f.truncate(size)
        for index, data in blocks.items():
            f.seek(index * BLOCK)
            f.write(data)
    digest = digest or "sha256:" + hashlib.sha256(disk.read_bytes() + salt.encode()).hexdigest()
    manifest = out / f"{name}.manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "name": name,
                "image_digest": digest,
                "platform": platform,
                "formats": [fmt],
                "outputs": [{"file": disk.name, "format": fmt, "sha256": digest, "size": size}],
            }
        )
    )
    return manifest, digest


def block_data(seed: int, length: int = BLOCK) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (length // 32 + 1))[:length]


def push(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any] | None, str]:
    code = main(["push", "aws", *args, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def read_snapshot(snapshot_id: str) -> dict[int, bytes]:
    ebs = boto3.client("ebs")
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
    return {
        b["BlockIndex"]: ebs.get_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]
        )["BlockData"].read()
        for b in listed["Blocks"]
    }


def snapshots_tagged(digest: str) -> list[dict[str, Any]]:
    return boto3.client("ec2").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": f"tag:{DIGEST_TAG}", "Values": [digest]}]
    )["Snapshots"]


def disk_blocks(disk: Path) -> dict[int, bytes]:
    data = disk.read_bytes()
    data += bytes(-len(data) % BLOCK)
    blocks = {i // BLOCK: data[i : i + BLOCK] for i in range(0, len(data), BLOCK)}
    return {i: b for i, b in blocks.items() if b != bytes(BLOCK)}


def test_push_writes_the_disk_block_by_block_and_registers_the_ami(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    size = 9 * BLOCK + 100_000  # not a whole number of blocks: the last one is padded
    blocks = {0: block_data(0), 2: bytes(BLOCK), 3: block_data(3), 9: block_data(9, 100_000)}
    manifest, digest = make_build(tmp_path, blocks, size)
    code, result, err = push(capsys, str(manifest))
    assert code == 0, err
    assert result is not None and result["reused"] is False and result["region"] == REGION
    # what EBS holds is the disk: the data blocks, none of the zero ones (block 2 was written as zeros)
    stored = read_snapshot(result["snapshot_id"])
    assert stored == disk_blocks(manifest.parent / "web.raw")
    assert sorted(stored) == [0, 3, 9]
    assert aws_push.faults.counts["ebs:PutSnapshotBlock"] == 3
    assert aws_push.faults.counts["ebs:CompleteSnapshot"] == 1
    snapshot = boto3.client("ec2").describe_snapshots(SnapshotIds=[result["snapshot_id"]])[
        "Snapshots"
    ][0]
    assert snapshot["State"] == "completed" and snapshot["VolumeSize"] == 1
    assert {"Key": DIGEST_TAG, "Value": digest} in snapshot["Tags"]
    image = boto3.client("ec2").describe_images(ImageIds=[result["image_id"]])["Images"][0]
    assert image["Name"] == f"web-{digest[7:19]}" == result["name"]
    assert image["Architecture"] == "x86_64"
    assert image["BootMode"] == "uefi-preferred"  # the aws format is a hybrid disk
    assert image["VirtualizationType"] == "hvm"
    assert image["EnaSupport"] is True and image["SriovNetSupport"] == "simple"
    assert image["ImdsSupport"] == "v2.0" and "TpmSupport" not in image
    assert image["RootDeviceName"] == "/dev/xvda"
    assert image["BlockDeviceMappings"] == [
        {
            "DeviceName": "/dev/xvda",
            "Ebs": {
                "SnapshotId": result["snapshot_id"],
                "VolumeSize": 1,
                "VolumeType": "gp3",
                "DeleteOnTermination": True,
            },
        }
    ]
    assert {"Key": DIGEST_TAG, "Value": digest} in image["Tags"]
    assert "snapshot" in err and "sent" in err  # progress went to stderr


def test_boot_mode_and_architecture_follow_the_build(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, _ = make_build(
        tmp_path, {0: block_data(1)}, BLOCK, platform="linux/arm64", fmt="raw-efi"
    )
    code, result, err = push(capsys, str(manifest), "--tpm", "--boot-mode", "uefi")
    assert code == 0, err
    assert result is not None
    image = boto3.client("ec2").describe_images(ImageIds=[result["image_id"]])["Images"][0]
    assert (image["Architecture"], image["BootMode"], image["TpmSupport"]) == (
        "arm64",
        "uefi",
        "v2.0",
    )
    bios, _ = make_build(tmp_path, {0: block_data(2)}, BLOCK, fmt="raw-bios", salt="b")
    code, result, err = push(capsys, str(bios))
    assert code == 0, err
    assert result is not None
    image = boto3.client("ec2").describe_images(ImageIds=[result["image_id"]])["Images"][0]
    assert (image["Architecture"], image["BootMode"]) == ("x86_64", "legacy-bios")


@pytest.mark.parametrize(
    ("platform", "fmt", "args", "message"),
    [
        ("linux/arm64", "aws", ["--boot-mode", "legacy-bios"], "arm64 instances boot only uefi"),
        ("linux/amd64", "raw-efi", ["--boot-mode", "legacy-bios"], "no BIOS boot loader"),
        ("linux/amd64", "aws", ["--tpm"], "--tpm needs --boot-mode uefi"),
        ("linux/riscv64", "aws", [], "EC2 runs no linux/riscv64 images"),
        ("linux/amd64", "aws", ["--share-with", "12345"], "an AWS account id is 12 digits"),
    ],
)
def test_impossible_pushes_are_refused_before_any_upload(
    aws_push: PushMoto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    platform: str,
    fmt: str,
    args: list[str],
    message: str,
) -> None:
    manifest, _ = make_build(tmp_path, {0: block_data(1)}, BLOCK, platform=platform, fmt=fmt)
    code, _, err = push(capsys, str(manifest), *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert not any(a.startswith("ebs:") for a in aws_push.faults.counts)


def test_a_second_push_of_the_same_digest_uploads_nothing(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, _ = make_build(tmp_path, {i: block_data(i) for i in range(4)}, 4 * BLOCK)
    code, first, err = push(capsys, str(manifest))
    assert code == 0, err
    assert aws_push.faults.counts["ebs:PutSnapshotBlock"] == 4
    aws_push.faults.clear()
    code, second, err = push(capsys, str(manifest))
    assert code == 0, err
    assert first is not None and second is not None
    assert second["reused"] is True
    assert (second["image_id"], second["snapshot_id"]) == (first["image_id"], first["snapshot_id"])
    assert not [a for a in aws_push.faults.counts if a.startswith("ebs:")]
    assert aws_push.faults.counts["ec2:RegisterImage"] == 0
    assert len(boto3.client("ec2").describe_images(Owners=["self"])["Images"]) == 1


def test_the_same_image_in_another_format_is_another_ami_and_a_reuse_keeps_what_was_asked(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hybrid, digest = make_build(tmp_path, {0: block_data(0), 1: block_data(1)}, 2 * BLOCK)
    bios, _ = make_build(
        tmp_path, {0: block_data(7)}, BLOCK, fmt="raw-bios", salt="b", digest=digest
    )
    code, first, err = push(capsys, str(hybrid))
    assert code == 0, err
    code, second, err = push(capsys, str(bios))
    assert code == 0, err
    assert first is not None and second is not None and second["reused"] is False
    assert second["image_id"] != first["image_id"] and second["snapshot_id"] != first["snapshot_id"]
    assert read_snapshot(second["snapshot_id"]) == disk_blocks(bios.parent / "web.raw")
    ec2 = boto3.client("ec2")
    modes = {
        i["ImageId"]: (
            i["BootMode"],
            {t["Key"]: t["Value"] for t in i["Tags"]}["provision-image-format"],
        )
        for i in ec2.describe_images(Owners=["self"])["Images"]
    }
    assert modes == {
        first["image_id"]: ("uefi-preferred", "aws"),
        second["image_id"]: ("legacy-bios", "raw-bios"),
    }
    aws_push.faults.clear()
    code, _, err = push(
        capsys, str(hybrid), "--boot-mode", "uefi"
    )  # the AMI there is uefi-preferred
    assert (
        code == 2
        and f"{first['image_id']} holds this image with boot mode uefi-preferred, not uefi" in err
    )
    assert not [a for a in aws_push.faults.counts if a.startswith("ebs:")]


def test_an_interrupted_push_resumes_sending_only_the_missing_blocks(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = {i * 2: block_data(i) for i in range(40)}
    manifest, digest = make_build(tmp_path, blocks, 80 * BLOCK)
    # the upload dies after 12 blocks (a refusal no retry gets past: the push stops there)
    aws_push.faults.fail_after(
        "ebs:PutSnapshotBlock", 12, Fault(403, "AccessDeniedException", "cut")
    )
    code, _, err = push(capsys, str(manifest), "--concurrency", "4")
    assert code == 1 and "PutSnapshotBlock" in err
    pending = snapshots_tagged(digest)
    assert [s["State"] for s in pending] == ["pending"]
    assert len(read_snapshot(pending[0]["SnapshotId"])) == 12
    aws_push.faults.clear()
    code, result, err = push(capsys, str(manifest))
    assert code == 0, err
    assert result is not None and result["snapshot_id"] == pending[0]["SnapshotId"]
    assert aws_push.faults.counts["ebs:StartSnapshot"] == 0
    assert aws_push.faults.counts["ebs:PutSnapshotBlock"] == 40 - 12
    assert read_snapshot(result["snapshot_id"]) == disk_blocks(manifest.parent / "web.raw")
    assert "resuming" in err


def test_a_push_killed_mid_upload_resumes_with_only_the_blocks_that_did_not_land(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal
    import time

    manifest, digest = make_build(tmp_path, {i: block_data(i) for i in range(30)}, 30 * BLOCK)
    aws_push.faults.hold_after(
        "ebs:PutSnapshotBlock", 8
    )  # then 4 more arrive and are held unanswered
    env = {
        **os.environ,
        **aws_push.env(),
        "PYTHONPATH": str(ROOT),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "provision", "push", "aws", str(manifest), "--concurrency", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while aws_push.faults.counts["ebs:PutSnapshotBlock"] < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert aws_push.faults.counts["ebs:PutSnapshotBlock"] == 12
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    aws_push.faults.release()  # what the dead push had sent lands now, as it may on EBS
    aws_push.faults.wait_idle()
    pending = snapshots_tagged(digest)
    assert [s["State"] for s in pending] == ["pending"]
    landed = read_snapshot(pending[0]["SnapshotId"])
    assert 8 <= len(landed) <= 12
    aws_push.faults.clear()
    code, result, err = push(capsys, str(manifest))
    assert code == 0, err
    assert result is not None and result["snapshot_id"] == pending[0]["SnapshotId"]
    assert aws_push.faults.counts["ebs:PutSnapshotBlock"] == 30 - len(landed)
    assert read_snapshot(result["snapshot_id"]) == disk_blocks(manifest.parent / "web.raw")


def test_a_failed_registration_deletes_the_snapshot(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, digest = make_build(tmp_path, {0: block_data(0)}, BLOCK)
    aws_push.faults.queue(
        "ec2:RegisterImage", Fault(400, "InvalidParameterValue", "refused by the test")
    )
    code, _, err = push(capsys, str(manifest))
    assert code == 1
    assert "RegisterImage" in err and "deleted" in err and "refused by the test" in err
    assert aws_push.faults.counts["ebs:CompleteSnapshot"] == 1
    assert snapshots_tagged(digest) == []
    assert boto3.client("ec2").describe_images(Owners=["self"])["Images"] == []


def test_copies_and_shares_are_idempotent(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, digest = make_build(tmp_path, {0: block_data(0)}, BLOCK)
    args = [
        str(manifest),
        "--copy-to",
        "us-west-2,eu-west-1",
        "--share-with",
        "111122223333,444455556666",
    ]
    code, first, err = push(capsys, *args)
    assert code == 0, err
    assert first is not None and sorted(first["copies"]) == ["eu-west-1", "us-west-2"]
    assert sorted(aws_push.faults.regions["ec2:CopyImage"]) == [
        "eu-west-1",
        "us-west-2",
    ]  # called in the destination
    aws_push.faults.clear()
    code, second, err = push(capsys, *args)
    assert code == 0, err
    assert second is not None and second["copies"] == first["copies"] and second["reused"] is True
    assert aws_push.faults.counts["ec2:CopyImage"] == 0
    assert aws_push.faults.counts["ec2:ModifyImageAttribute"] == 0
    for region, image_id in [(REGION, first["image_id"]), *first["copies"].items()]:
        ec2 = boto3.client("ec2", region_name=region)
        images = ec2.describe_images(Owners=["self"])["Images"]
        assert [i["ImageId"] for i in images] == [image_id]
        assert {"Key": DIGEST_TAG, "Value": digest} in images[0]["Tags"]
        permissions = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")[
            "LaunchPermissions"
        ]
        assert sorted(p["UserId"] for p in permissions) == ["111122223333", "444455556666"]
        snapshot = images[0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        volume = ec2.describe_snapshot_attribute(
            SnapshotId=snapshot, Attribute="createVolumePermission"
        )
        assert sorted(p["UserId"] for p in volume["CreateVolumePermissions"]) == [
            "111122223333",
            "444455556666",
        ]


def test_throttling_and_unavailable_answers_are_retried(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, _ = make_build(tmp_path, {i: block_data(i) for i in range(6)}, 6 * BLOCK)
    faults = aws_push.faults
    faults.queue("ebs:StartSnapshot", UNAVAILABLE)
    faults.queue(
        "ebs:PutSnapshotBlock",
        THROTTLED_EBS,
        UNAVAILABLE,
        CONCURRENT_LIMIT,
        THROTTLED_EBS,
        CONCURRENT_LIMIT,
    )
    faults.queue("ebs:CompleteSnapshot", THROTTLED_EBS)
    faults.queue("ec2:RegisterImage", THROTTLED_EC2)
    faults.queue("ec2:DescribeImages", UNAVAILABLE)
    code, result, err = push(capsys, str(manifest))
    assert code == 0, err
    assert result is not None
    assert faults.injected == {
        "ebs:StartSnapshot": 1,
        "ebs:PutSnapshotBlock": 5,
        "ebs:CompleteSnapshot": 1,
        "ec2:RegisterImage": 1,
        "ec2:DescribeImages": 1,
    }
    assert read_snapshot(result["snapshot_id"]) == disk_blocks(manifest.parent / "web.raw")
    assert len(boto3.client("ec2").describe_images(Owners=["self"])["Images"]) == 1


def test_a_throttled_request_waits_as_long_as_retry_after_asks(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, _ = make_build(tmp_path, {0: block_data(0)}, BLOCK)
    aws_push.faults.queue(
        "ec2:RegisterImage", Fault(503, "RequestLimitExceeded", "slow down", retry_after=3)
    )
    code, _, err = push(capsys, str(manifest))
    assert code == 0, err
    first, second = aws_push.faults.times["ec2:RegisterImage"]
    assert 3 <= second - first < 10  # back-off alone would have waited at most 0.5 s


def test_a_stalled_request_is_abandoned_after_the_read_timeout_and_retried(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    manifest, _ = make_build(tmp_path, {i: block_data(i) for i in range(3)}, 3 * BLOCK)
    aws_push.faults.stall("ebs:PutSnapshotBlock", 10.0)  # the first block's answer would take 10 s
    start = time.monotonic()
    code, result, err = push(capsys, str(manifest), "--request-timeout", "1")
    assert code == 0, err
    assert time.monotonic() - start < 9
    assert aws_push.faults.counts["ebs:PutSnapshotBlock"] == 4  # three blocks, one of them twice
    assert result is not None
    assert read_snapshot(result["snapshot_id"]) == disk_blocks(manifest.parent / "web.raw")


def test_the_secret_key_never_appears_in_any_output(aws_push: PushMoto, tmp_path: Path) -> None:
    manifest, _ = make_build(tmp_path, {0: block_data(0), 1: block_data(1)}, 2 * BLOCK)
    env = {
        **os.environ,
        **aws_push.env(),
        "PYTHONPATH": str(ROOT),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    outputs = []
    aws_push.faults.queue("ec2:RegisterImage", Fault(400, "InvalidParameterValue", "refused"))
    for expected in (1, 0, 0):  # a failed push, a push, a reuse
        run = subprocess.run(
            [sys.executable, "-m", "provision", "-v", "push", "aws", str(manifest), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == expected, run.stderr
        outputs += [run.stdout, run.stderr]
    assert SECRET_MARKER in env["AWS_SECRET_ACCESS_KEY"]
    assert all(SECRET_MARKER not in text for text in outputs)
    assert "reused" in outputs[-2]


def test_no_region_and_no_credentials_are_clear_errors(
    aws_push: PushMoto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest, _ = make_build(tmp_path, {0: block_data(0)}, BLOCK)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    code, _, err = push(capsys, str(manifest))
    assert code == 2 and "no AWS region" in err
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, _, err = push(capsys, str(manifest))
    assert code == 2 and "no AWS credentials" in err
    assert not aws_push.faults.counts.get("ebs:StartSnapshot")


def test_an_image_spec_is_built_once_in_the_aws_format_then_reused(
    aws_push: PushMoto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from build.build_testkit import SPEC, write_test_images

    from provision.oci.store import ImageStore

    write_test_images(ImageStore(tmp_path / "oci"))
    monkeypatch.setenv("PROVISION_CACHE", str(tmp_path / "oci"))
    monkeypatch.setenv("PROVISION_ARTIFACTS", str(tmp_path / "artifacts"))
    spec = tmp_path / "machine.yml"
    spec.write_text(SPEC)
    code, result, err = push(capsys, str(spec), "--name", "machine")
    assert code == 0, err
    assert result is not None and result["reused"] is False
    built = list((tmp_path / "artifacts").glob("*/aws/machine.raw"))
    assert len(built) == 1 and built[0].parent.parent.name == result["digest"].split(":")[1]
    assert read_snapshot(result["snapshot_id"]) == disk_blocks(built[0])
    image = boto3.client("ec2").describe_images(ImageIds=[result["image_id"]])["Images"][0]
    assert image["BootMode"] == "uefi-preferred" and image["Name"] == result["name"]
    aws_push.faults.clear()
    stamp = built[0].stat().st_mtime_ns
    code, again, err = push(capsys, str(spec))
    assert code == 0, err
    assert again is not None and again["reused"] is True and again["image_id"] == result["image_id"]
    assert "building" not in err and built[0].stat().st_mtime_ns == stamp
    assert not [a for a in aws_push.faults.counts if a.startswith("ebs:")]


def test_the_target_publishes_a_group_image_and_finds_it_by_digest(
    aws_push: PushMoto, tmp_path: Path
) -> None:
    from provision.providers import get_target
    from provision.providers.aws.session import SessionSettings
    from provision.target import read_artifact

    class RegionOnly:  # what the target reads of its provider: its session settings
        settings = SessionSettings("us-west-2")

    manifest, digest = make_build(tmp_path, {0: block_data(0)}, BLOCK)
    target = get_target("aws")
    provider: Any = RegionOnly()
    assert target.find_image(provider, digest) is None
    published = target.publish(provider, read_artifact(manifest, "aws"))
    assert published.reused is False and published.id.startswith("ami-")
    assert target.find_image(provider, digest) == published.id
    assert aws_push.faults.regions["ec2:RegisterImage"] == ["us-west-2"]
    again = target.publish(provider, read_artifact(manifest, "aws"))
    assert (again.id, again.reused) == (published.id, True)


def mbr_block(seed: int) -> bytes:
    """A first block with an MBR boot signature (what ImportSnapshot's validation looks for)."""
    data = bytearray(block_data(seed))
    data[510:512] = b"\x55\xaa"
    return bytes(data)


def test_the_import_method_uploads_to_s3_and_imports_the_snapshot(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boto3.client("s3").create_bucket(Bucket="images")
    aws_push.faults.clear()
    size = 20 * 1024 * 1024  # three 8 MiB parts
    manifest, digest = make_build(
        tmp_path, {0: mbr_block(0), 17: block_data(17), 39: block_data(39)}, size
    )
    code, result, err = push(capsys, str(manifest), "--method", "import", "--bucket", "images")
    assert code == 0, err
    assert result is not None
    assert aws_push.faults.counts["ec2:ImportSnapshot"] == 1
    assert (
        aws_push.faults.counts["s3:UploadPart"] == 3
        and aws_push.faults.counts["ebs:PutSnapshotBlock"] == 0
    )
    assert read_snapshot(result["snapshot_id"]) == disk_blocks(manifest.parent / "web.raw")
    assert [s["SnapshotId"] for s in snapshots_tagged(digest)] == [result["snapshot_id"]]
    assert (
        boto3.client("s3").list_objects_v2(Bucket="images").get("KeyCount") == 0
    )  # the object is gone
    image = boto3.client("ec2").describe_images(ImageIds=[result["image_id"]])["Images"][0]
    assert image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == result["snapshot_id"]
    assert {"Key": DIGEST_TAG, "Value": digest} in image["Tags"]
    aws_push.faults.clear()
    code, again, err = push(capsys, str(manifest), "--method", "import", "--bucket", "images")
    assert code == 0 and again is not None and again["reused"] is True
    assert (
        aws_push.faults.counts["s3:UploadPart"] == 0
        and aws_push.faults.counts["ec2:ImportSnapshot"] == 0
    )


def test_an_interrupted_s3_upload_resumes_with_the_missing_parts(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boto3.client("s3").create_bucket(Bucket="images")
    aws_push.faults.clear()
    manifest, _ = make_build(
        tmp_path, {i * 16: mbr_block(i) for i in range(10)}, 80 * 1024 * 1024
    )  # 10 parts
    aws_push.faults.fail_after("s3:UploadPart", 3, Fault(403, "AccessDenied", "cut"))
    code, _, err = push(
        capsys, str(manifest), "--method", "import", "--bucket", "images", "--concurrency", "2"
    )
    assert code == 1 and "UploadPart" in err
    aws_push.faults.clear()
    code, result, err = push(capsys, str(manifest), "--method", "import", "--bucket", "images")
    assert code == 0, err
    assert "resuming the upload" in err
    assert aws_push.faults.counts["s3:UploadPart"] == 10 - 3
    assert (
        aws_push.faults.counts["s3:CreateMultipartUpload"] == 0
        and aws_push.faults.counts["s3:CompleteMultipartUpload"] == 1
    )
    assert result is not None
    assert read_snapshot(result["snapshot_id"]) == disk_blocks(manifest.parent / "web.raw")


def test_a_failed_import_reports_the_tasks_own_message_at_once(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    boto3.client("s3").create_bucket(Bucket="images")
    aws_push.faults.clear()
    manifest, _ = make_build(
        tmp_path, {0: block_data(0)}, BLOCK
    )  # no boot signature: validation fails
    start = time.monotonic()
    code, _, err = push(
        capsys, str(manifest), "--method", "import", "--bucket", "images", "--timeout", "900"
    )
    assert code == 1
    assert "import task" in err and "ClientError: Disk validation failed" in err
    assert time.monotonic() - start < 60  # not the 900 s bound
    assert aws_push.faults.counts["ec2:RegisterImage"] == 0


def test_the_import_method_needs_a_bucket(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, _ = make_build(tmp_path, {0: mbr_block(0)}, BLOCK)
    code, _, err = push(capsys, str(manifest), "--method", "import")
    assert code == 2 and "--method import needs --bucket" in err


def run_every_kind_of_push(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> set[str]:
    """The IAM actions behind every request of: an ebs push with copies and shares, its reuse, an
    interrupted and resumed ebs push, a failed registration, an import push (interrupted and
    resumed) and its reuse (test set-up and read-backs excluded)."""
    boto3.client("s3").create_bucket(Bucket="images")
    aws_push.faults.clear()
    called: set[str] = set()

    def run(*args: str, expect: int = 0, fault: tuple[str, int] | None = None) -> None:
        if fault is not None:
            aws_push.faults.fail_after(fault[0], fault[1], Fault(403, "AccessDenied", "cut"))
        code, _, err = push(capsys, *args)
        assert code == expect, err
        called.update(aws_push_testkit.iam_actions(aws_push.faults.counts))
        aws_push.faults.clear()

    manifest, _ = make_build(tmp_path, {0: mbr_block(0), 3: block_data(3)}, 4 * BLOCK)
    cut, _ = make_build(tmp_path, {i: block_data(i) for i in range(4)}, 4 * BLOCK, salt="c")
    failing, _ = make_build(tmp_path, {0: mbr_block(1)}, BLOCK, salt="f")
    imported, _ = make_build(
        tmp_path, {0: mbr_block(2), 20: block_data(20)}, 12 * 1024 * 1024, salt="i"
    )
    shares = ["--copy-to", "us-west-2", "--share-with", "111122223333"]
    run(str(manifest), *shares)
    run(str(manifest), *shares)
    run(str(cut), "--concurrency", "1", expect=1, fault=("ebs:PutSnapshotBlock", 2))
    run(str(cut))
    aws_push.faults.queue("ec2:RegisterImage", Fault(400, "InvalidParameterValue", "refused"))
    run(str(failing), expect=1)
    imports = [str(imported), "--method", "import", "--bucket", "images"]
    run(*imports, "--concurrency", "1", expect=1, fault=("s3:UploadPart", 1))
    run(*imports)
    run(*imports)
    return called


def test_the_documented_permissions_are_exactly_what_pushes_call(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    called = run_every_kind_of_push(aws_push, tmp_path, capsys)
    doc = (ROOT / "docs" / "aws.md").read_text()
    section = doc[doc.index("### Permissions a push uses") :]
    section = section[: section.index("\n### ", 1)] if "\n### " in section[1:] else section
    documented = set(re.findall(r"`((?:ec2|ebs|s3):[A-Za-z]+)`", section))
    assert called - documented == set(), "called but not documented"
    assert documented - called == set(), "documented but never called"
