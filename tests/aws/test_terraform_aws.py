"""terraform/aws, checked without a Terraform binary: every file parses (python-hcl2), checkov
finds no failed check (each skip carries its reason), and every EC2 call the aws provider makes
against moto is allowed by the module's daemon policy (its HCL policy document evaluated for
the calls' real parameters: the tags a launch carries, the tags of what is terminated), and the
policy allows nothing the provider does not call."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aws.ec2_standin import Ec2Moto
from terraform_testkit import (
    TERRAFORM,
    assert_checkov_passes,
    covers,
    flat,
    flat_blocks,
    one,
    parse_module,
    unused,
)

from provision.clock import SystemClock
from provision.providers import get_target
from provision.reconcile.provider import TAG_CLUSTER, TAG_GROUP, TAG_SLOT, CreateRequest, list_all
from provision.reconcile.spec import ProviderSpec

MODULE = TERRAFORM / "aws"
CLUSTER = "shop"
VARIABLES = {"${var.clusters}": [CLUSTER]}
# the resource types each call touches (RunInstances: what it creates and what it launches from)
TOUCHES = {
    "RunInstances": (
        "instance",
        "volume",
        "image",
        "network-interface",
        "security-group",
        "subnet",
    ),
    "TerminateInstances": ("instance",),
    "DescribeInstances": ("*",),
}


def policy_statements(name: str) -> list[dict[str, Any]]:
    """The statements of ``data "aws_iam_policy_document" NAME``, dynamic ones included."""
    for block in parse_module(MODULE)["main.tf"].get("data", []):
        document = block.get("aws_iam_policy_document", {}).get(name)
        if document is None:
            continue
        found = list(document.get("statement", []))
        for dynamic in document.get("dynamic", []):
            for content in flat_blocks(one(dynamic.get("statement", {})).get("content", [])):
                found.append(content)
        return [normalized(s) for s in found]
    raise AssertionError(f"no policy document {name}")


def normalized(statement: Mapping[str, Any]) -> dict[str, Any]:
    conditions = [
        {
            "test": str(one(c["test"])),
            "variable": str(one(c["variable"])),
            "values": values(c["values"]),
        }
        for c in flat_blocks(statement.get("condition", []))
    ]
    return {
        "sid": str(one(statement.get("sid", ""))),
        "actions": flat(statement["actions"]),
        "resources": flat(statement["resources"]),
        "conditions": conditions,
    }


def values(raw: Any) -> list[str]:
    out: list[str] = []
    for value in flat(raw):
        out += VARIABLES.get(value, [value])
    return out


def resource_type(pattern: str) -> str:
    if ":s3:::" in pattern:
        return "object" if "/" in pattern else "bucket"
    return "*" if pattern == "*" else pattern.rsplit(":", 1)[-1].split("/", 1)[0]


def allowed(
    statements: Sequence[Mapping[str, Any]], action: str, resource: str, context: Mapping[str, str]
) -> bool:
    for statement in statements:
        if not any(covers(a, action) for a in statement["actions"]):
            continue
        if not any(resource_type(r) in ("*", resource) for r in statement["resources"]):
            continue
        if all(condition_holds(c, context) for c in statement["conditions"]):
            return True
    return False


def condition_holds(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    present = condition["variable"] in context
    if condition["test"] == "StringEquals":
        return present and context[condition["variable"]] in condition["values"]
    if condition["test"] == "Null":
        return (
            condition["values"] == ["false"]
            and present
            or condition["values"] == ["true"]
            and not present
        )
    return False  # a test this evaluator does not know denies (fail closed)


def launch_tags(form: Mapping[str, list[str]], kind: str) -> dict[str, str]:
    """The tags a RunInstances request puts on ``kind`` (instance, volume), from its parameters."""
    tags: dict[str, str] = {}
    for key, value in form.items():
        match = re.fullmatch(r"TagSpecification\.(\d+)\.ResourceType", key)
        if match and value == [kind]:
            n = match.group(1)
            m = 1
            while f"TagSpecification.{n}.Tag.{m}.Key" in form:
                tags[form[f"TagSpecification.{n}.Tag.{m}.Key"][0]] = form[
                    f"TagSpecification.{n}.Tag.{m}.Value"
                ][0]
                m += 1
    return tags


def test_every_file_parses() -> None:
    parsed = parse_module(MODULE)
    assert set(parsed) == {"main.tf", "variables.tf", "outputs.tf"}
    declared = {name for block in parsed["variables.tf"]["variable"] for name in block}
    assert {"clusters", "enable_import", "instance_role_arns", "name_prefix"} <= declared
    readme = (MODULE.parent / "README.md").read_text()
    outputs = {name for block in parsed["outputs.tf"]["output"] for name in block}
    assert all(
        f"`{name}`" in readme for name in declared | outputs
    )  # every variable and output documented


def test_checkov_finds_no_failed_check_and_every_skip_has_a_reason() -> None:
    assert_checkov_passes(MODULE, "AWS", passed_at_least=41)


def test_the_daemon_policy_allows_every_call_the_provider_makes_and_no_other(
    ec2: Ec2Moto, tmp_path: Path
) -> None:
    options = {"region": "us-east-1", "readTimeout": "5s", "pageSize": 5}
    provider = get_target("aws").create_provider(
        ProviderSpec("cloud", "aws", options=options, base=tmp_path), SystemClock()
    )
    tags = {
        TAG_CLUSTER: CLUSTER,
        TAG_GROUP: "web",
        TAG_SLOT: "00001",
        "provision-config": "c1",
        "provision-epoch": "1",
    }
    properties = {
        "instanceType": "t3.micro",
        "rootVolume": {"size": 9},
        "securityGroupIds": [],
        "market": "spot",
    }
    image = ec2.image()
    ec2.layer.reset()
    made = [
        provider.create_instance(
            CreateRequest(
                f"{CLUSTER}/web/{n:05d}/1",
                f"{CLUSTER}-web-{n:05d}",
                image,
                properties,
                {**tags, TAG_SLOT: f"{n:05d}"},
                1,
            )
        )
        for n in range(1, 7)
    ]
    listed, pages = list_all(provider, {TAG_CLUSTER: CLUSTER, TAG_GROUP: "web"})
    assert len(listed) == 6 and pages == 2
    fresh = get_target("aws").create_provider(
        ProviderSpec("cloud", "aws", options=options, base=tmp_path), SystemClock()
    )
    assert fresh.address(made[0], 7080) is not None  # an address it has not seen: looked up by id
    for instance in made[:2]:
        provider.destroy_instance(instance.id, 1)
    provider.destroy_instance(made[0].id, 1)  # gone already: still one TerminateInstances, allowed
    daemon = policy_statements("daemon")
    by_id = {i["InstanceId"]: i for i in ec2.instances()}
    denied = []
    for action, form in ec2.layer.received:
        if action == "DescribeImages":  # the test's own look-up of an AMI, not the provider's
            continue
        for resource in TOUCHES.get(action, ("?",)):
            context: dict[str, str] = {}
            if action == "RunInstances" and resource in ("instance", "volume"):
                created = launch_tags(form, resource)
                assert created, f"RunInstances without tags on its {resource}"
                context = {f"aws:RequestTag/{k}": v for k, v in created.items()}
                if not allowed(
                    daemon,
                    "ec2:CreateTags",
                    resource,
                    {"ec2:CreateAction": "RunInstances", **context},
                ):
                    denied.append(f"ec2:CreateTags on a launched {resource}")
            if action == "TerminateInstances":
                target = by_id[form["InstanceId.1"][0]]
                context = {
                    f"ec2:ResourceTag/{t['Key']}": t["Value"] for t in target.get("Tags", [])
                }
            if not allowed(daemon, f"ec2:{action}", resource, context):
                denied.append(f"ec2:{action} on {resource} with {context}")
    assert denied == []
    called = {f"ec2:{a}" for a, _ in ec2.layer.received if a != "DescribeImages"}
    assert called == {"ec2:RunInstances", "ec2:DescribeInstances", "ec2:TerminateInstances"}
    granted = {a for s in daemon for a in s["actions"]}
    # nothing more: CreateTags only as part of a launch, PassRole only for the roles the user names
    assert set(unused(granted, called)) == {"ec2:CreateTags", "iam:PassRole"}


def test_the_daemon_policy_denies_launches_and_terminations_of_other_clusters() -> None:
    daemon = policy_statements("daemon")
    theirs = {
        "aws:RequestTag/provision-cluster": "billing",
        "aws:RequestTag/provision-group": "web",
        "aws:RequestTag/provision-slot": "00001",
    }
    mine = {**theirs, "aws:RequestTag/provision-cluster": CLUSTER}
    assert allowed(daemon, "ec2:RunInstances", "instance", mine)
    assert not allowed(daemon, "ec2:RunInstances", "instance", theirs)
    untagged = {k: v for k, v in mine.items() if not k.endswith("provision-slot")}
    assert not allowed(daemon, "ec2:RunInstances", "volume", untagged)
    assert not allowed(daemon, "ec2:CreateTags", "instance", mine)  # tagging later: never
    assert not allowed(
        daemon,
        "ec2:TerminateInstances",
        "instance",
        {"ec2:ResourceTag/provision-cluster": "billing"},
    )
    assert not allowed(daemon, "ec2:TerminateInstances", "instance", {})


def test_the_push_policy_covers_ebs_direct_registration_copy_and_share() -> None:
    push = policy_statements("push")
    for action, resource in [
        ("ebs:StartSnapshot", "snapshot"),
        ("ebs:PutSnapshotBlock", "snapshot"),
        ("ebs:CompleteSnapshot", "snapshot"),
        ("ebs:ListSnapshotBlocks", "snapshot"),
        ("ec2:RegisterImage", "image"),
        ("ec2:RegisterImage", "snapshot"),
        ("ec2:CopyImage", "image"),
        ("ec2:ModifyImageAttribute", "image"),
        ("ec2:CreateTags", "image"),
        ("ec2:DescribeImages", "*"),
        ("ec2:DescribeImageAttribute", "image"),
        ("ec2:ModifySnapshotAttribute", "snapshot"),
        ("s3:PutObject", "object"),
        ("s3:DeleteObject", "object"),
        ("ec2:ImportSnapshot", "snapshot"),
    ]:
        assert allowed(
            push, action, resource, {"ec2:ResourceTag/provision-image-digest": "sha256-x"}
        ), (action, resource)
    assert allowed(
        push,
        "ec2:DeleteSnapshot",
        "snapshot",
        {"ec2:ResourceTag/provision-image-digest": "sha256-x"},
    )
    assert not allowed(push, "ec2:DeleteSnapshot", "snapshot", {})  # only what push made
    assert not allowed(push, "ec2:RunInstances", "instance", {})
