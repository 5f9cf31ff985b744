"""After both halves of the aws target are merged: terraform/aws's push policy allows every
IAM action behind every request a push makes (run against moto through the fault layer, which
names each request), for the resources and tags the push uses."""

from __future__ import annotations

from pathlib import Path

import aws_push_testkit
import pytest
from aws.test_push import run_every_kind_of_push
from aws.test_terraform_aws import allowed, policy_statements
from aws_push_testkit import PushMoto

moto_push_server = aws_push_testkit.moto_push_server  # the fixtures
aws_push = aws_push_testkit.aws_push

RESOURCE = {
    "ec2:RegisterImage": "image",
    "ec2:CopyImage": "image",
    "ec2:ModifyImageAttribute": "image",
    "ec2:ModifySnapshotAttribute": "snapshot",
    "ec2:DeleteSnapshot": "snapshot",
    "ec2:CreateTags": "snapshot",
    "ec2:ImportSnapshot": "snapshot",
    "ec2:DescribeImageAttribute": "image",
    "ec2:DescribeSnapshotAttribute": "snapshot",
}


def test_the_push_policy_allows_every_call_a_push_makes(
    aws_push: PushMoto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    called = run_every_kind_of_push(aws_push, tmp_path, capsys)
    push = policy_statements("push")
    tagged = {
        "ec2:ResourceTag/provision-image-digest": "sha256:" + "0" * 64
    }  # what push tags its snapshots with
    denied = []
    for action in sorted(called):
        if action.startswith("s3:"):  # on the import bucket (its ARN is a variable here)
            ok = any(action in statement["actions"] for statement in push)
        else:
            kind = RESOURCE.get(action, "snapshot" if action.startswith("ebs:") else "*")
            ok = allowed(push, action, kind, tagged)
        if not ok:
            denied.append(action)
    assert denied == [], f"the push policy denies {denied}"
