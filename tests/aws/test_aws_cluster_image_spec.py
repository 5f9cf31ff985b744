"""After both halves of the aws target are merged: an aws group whose ``image`` is an image spec
is planned by digest (nothing built), applied by building the aws disk once, pushing it (EBS
direct + RegisterImage, in the provider's region) and launching that AMI; a second apply
reuses the AMI (nothing built or uploaded)."""

from __future__ import annotations

from pathlib import Path

import aws_push_testkit
import boto3
import pytest
from aws_push_testkit import PushMoto
from build.build_testkit import SPEC, write_test_images

from provision.cli import main
from provision.oci.store import ImageStore

moto_push_server = aws_push_testkit.moto_push_server  # the fixtures
aws_push = aws_push_testkit.aws_push

CLUSTER = """\
cluster: shop
providers:
  cloud:
    type: aws
    options: {region: us-west-2}
groups:
  - name: web
    provider: cloud
    image: machine.yml
    size: 2
    properties:
      instanceType: t3.micro
"""


def test_an_image_spec_group_is_built_pushed_and_launched_once(
    aws_push: PushMoto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_test_images(ImageStore(tmp_path / "oci"))
    monkeypatch.setenv("PROVISION_CACHE", str(tmp_path / "oci"))
    monkeypatch.setenv("PROVISION_ARTIFACTS", str(tmp_path / "artifacts"))
    (tmp_path / "machine.yml").write_text(SPEC)
    spec = tmp_path / "cluster.yml"
    spec.write_text(CLUSTER)
    journal = str(tmp_path / "journal.db")
    assert main(["plan", str(spec), "--journal", journal]) in (0, 2)
    out = capsys.readouterr().out
    assert "image: will build sha256:" in out
    assert (
        not (tmp_path / "artifacts").exists() and aws_push.faults.counts["ebs:StartSnapshot"] == 0
    )
    code = main(["apply", str(spec), "--journal", journal, "--interval", "0"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    ec2 = boto3.client("ec2", region_name="us-west-2")
    images = ec2.describe_images(Owners=["self"])["Images"]
    assert len(images) == 1 and images[0]["ImdsSupport"] == "v2.0"
    instances = [
        i
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running")
    ]
    assert len(instances) == 2 and {i["ImageId"] for i in instances} == {images[0]["ImageId"]}
    assert aws_push.faults.regions["ec2:RegisterImage"] == ["us-west-2"]
    aws_push.faults.clear()
    assert main(["plan", str(spec), "--journal", journal, "--detailed-exitcode"]) == 0
    capsys.readouterr()
    assert not [a for a in aws_push.faults.counts if a.startswith("ebs:")]
    assert aws_push.faults.counts["ec2:RegisterImage"] == 0
