"""An aws cluster reconciled against moto (behind the EC2 layer): the engine and a real journal
through ``provision plan`` / ``apply``, with faults on the way; the spec's aws schemas; what
one create sends; and the secret key never written anywhere."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aws.aws_testkit import SECRET_MARKER
from aws.ec2_standin import Ec2Moto

from provision.cli import main
from provision.errors import SpecError
from provision.providers.aws.instances import client_token, render_user_data
from provision.reconcile.provider import TAG_CLUSTER, TAG_CONFIG, TAG_EPOCH, TAG_GROUP, TAG_SLOT
from provision.reconcile.spec import parse_cluster_spec

SPEC = """\
cluster: shop
providers:
  cloud:
    type: aws
    options: {{region: us-east-1, readTimeout: 2s}}
groups:
  - name: web
    provider: cloud
    image: {image}
    size: {size}
    properties:
      instanceType: t3.micro
      rootVolume: {{size: 9, type: gp3}}
      userData: "hello from the group"
"""
OWNERSHIP = (TAG_CLUSTER, TAG_GROUP, TAG_SLOT, TAG_CONFIG, TAG_EPOCH)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def live(moto: Ec2Moto) -> list[dict[str, Any]]:
    return [i for i in moto.instances() if i["State"]["Name"] in ("pending", "running")]


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def test_an_aws_cluster_applies_through_faults_and_reaches_a_fixpoint(
    ec2: Ec2Moto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "cluster.yml"
    spec.write_text(SPEC.format(image=ec2.image(), size=3))
    journal = str(tmp_path / "journal.db")
    code, out, _ = run(capsys, "plan", str(spec), "--journal", journal, "--detailed-exitcode")
    assert code == 2 and "Plan: 3 to create" in out
    # throttled twice, one 503, and one create whose answer never comes (it took effect)
    ec2.layer.inject("RunInstances", "throttle", 2)
    ec2.layer.inject("RunInstances", "503")
    ec2.layer.inject("RunInstances", "slow")
    ec2.layer.inject("DescribeInstances", "throttling")
    code, out, err = run(capsys, "apply", str(spec), "--journal", journal, "--interval", "0")
    assert code == 0, out + err
    machines = live(ec2)
    states = [
        (i["InstanceId"], i["State"]["Name"], tags_of(i).get(TAG_SLOT)) for i in ec2.instances()
    ]
    assert len(machines) == 3, (
        states,
        out,
    )  # the timed-out create was found again by its ClientToken
    slots = Counter(tags_of(m)[TAG_SLOT] for m in machines)
    assert all(n == 1 for n in slots.values())
    for machine in machines:
        tags = tags_of(machine)
        assert (
            set(OWNERSHIP) <= set(tags) and tags[TAG_CLUSTER] == "shop" and tags[TAG_GROUP] == "web"
        )
        assert tags["Name"] == f"shop-web-{tags[TAG_SLOT]}"
        assert machine["MetadataOptions"]["HttpTokens"] == "required"
        data = ec2.client().describe_instance_attribute(
            InstanceId=machine["InstanceId"], Attribute="userData"
        )
        tree = json.loads(base64.b64decode(data["UserData"]["Value"]))
        assert tree == {
            "hostname": {"content": tags["Name"]},
            "userdata": {"content": "hello from the group"},
        }
    volumes = ec2.client().describe_volumes()["Volumes"]
    assert len(volumes) == 3 and {v["Size"] for v in volumes} == {9}
    assert all(tags_of(v).get(TAG_CLUSTER) == "shop" and TAG_SLOT in tags_of(v) for v in volumes)
    calls = Counter(ec2.layer.calls)
    assert calls["CreateTags"] == 0  # tags at birth, never a second call
    code, out, _ = run(capsys, "plan", str(spec), "--journal", journal, "--detailed-exitcode")
    assert code == 0 and "No changes" in out
    # shrink: the engine terminates one; terminating it again later is fine
    spec.write_text(SPEC.format(image=ec2.image(), size=2))
    assert run(capsys, "apply", str(spec), "--journal", journal, "--interval", "0")[0] == 0
    assert len(live(ec2)) == 2


def test_the_secret_key_is_never_written(
    ec2: Ec2Moto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ec2.env()["AWS_SECRET_ACCESS_KEY"] == SECRET_MARKER
    spec = tmp_path / "cluster.yml"
    spec.write_text(SPEC.format(image=ec2.image(), size=2))
    journal = tmp_path / "journal.db"
    plan = tmp_path / "plan.json"
    outputs = []
    ec2.layer.inject("RunInstances", "throttle")
    ec2.layer.inject("DescribeInstances", "slow")
    for argv in (
        ["plan", str(spec), "--out", str(plan)],
        ["apply", str(plan)],
        ["apply", str(spec), "--interval", "0"],
        ["plan", str(spec), "--json"],
        ["status", str(spec), "--json"],
    ):
        code, out, err = run(capsys, *argv, "--journal", str(journal))
        outputs += [out, err]
    assert code == 0 and len(live(ec2)) == 2
    produced = [*outputs, plan.read_text(), journal.read_bytes().decode("latin-1")]
    produced += [p.read_bytes().decode("latin-1") for p in tmp_path.glob("journal.db*")]
    assert not any(SECRET_MARKER in text for text in produced)
    db = sqlite3.connect(journal)
    assert db.execute("SELECT COUNT(*) FROM intents").fetchone()[0] >= 2  # the journal was written
    db.close()


def test_aws_options_and_properties_are_checked_with_located_errors() -> None:
    text = """\
cluster: shop
providers:
  cloud: {type: aws, options: {regoin: us-east-1, publicAddress: maybe}}
groups:
  - name: web
    provider: cloud
    image: ami-12345678
    size: 1
    properties:
      subnetId: vpc-1
      market: reserved
      rootVolume: {size: 0, type: gp3}
      metadata: {httpTokens: sometimes}
"""
    with pytest.raises(SpecError) as caught:
        parse_cluster_spec(text, "cluster.yml")
    messages = [str(p) for p in caught.value.problems]
    expected = [
        "cluster.yml:3:",
        "regoin: unknown key (did you mean 'region'?)",
        "missing required key 'region'",
        "publicAddress: must be true or false",
        "missing required key 'instanceType'",
        "subnetId: must be a subnet id",
        "market: must be on-demand or spot",
        "rootVolume: must be",
        "metadata: must be",
    ]
    for fragment in expected:
        assert any(fragment in m for m in messages), (fragment, messages)
    assert all(m.startswith("cluster.yml:") for m in messages)


def test_the_example_loads() -> None:
    from provision.providers.aws.properties import parse_machine_properties
    from provision.reconcile.spec import load_cluster_spec

    spec = load_cluster_spec(Path(__file__).resolve().parents[2] / "examples" / "aws-cluster.yml")
    (web,) = spec.groups
    props = parse_machine_properties(web.properties)
    assert (
        props.instance_type == "t3.micro"
        and props.http_tokens == "required"
        and props.root_volume is not None
    )
    assert str(web.image).endswith("web.yml")


def test_a_client_token_is_a_deterministic_digest_ec2_accepts() -> None:
    key = "a-cluster-with-a-long-name/web-frontend/00042/17" * 3
    assert client_token(key) == client_token(key) and len(client_token(key)) == 64
    assert client_token(key) != client_token(key + "x")
    assert client_token(key).isascii()


def test_user_data_too_big_for_ec2_fails_that_create_for_good_before_any_call(
    ec2: Ec2Moto, tmp_path: Path
) -> None:
    from provision.clock import SystemClock
    from provision.providers import get_target
    from provision.reconcile.provider import CreateRequest, ProviderError, TransientProviderError
    from provision.reconcile.spec import ProviderSpec

    provider = get_target("aws").create_provider(
        ProviderSpec("cloud", "aws", options={"region": "us-east-1"}, base=tmp_path), SystemClock()
    )
    properties = {
        "instanceType": "t3.micro",
        "userData": "x" * 16380,
    }  # fits alone, not with the hostname
    ec2.layer.reset()
    with pytest.raises(ProviderError) as caught:
        provider.create_instance(
            CreateRequest(
                "shop/web/00001/1",
                "shop-web-00001",
                ec2.image(),
                properties,
                {TAG_CLUSTER: "shop"},
                1,
            )
        )
    assert not isinstance(caught.value, TransientProviderError) and "16384" in str(caught.value)
    assert "RunInstances" not in ec2.layer.calls


def test_address_is_the_private_ip_or_the_public_one_by_option(
    ec2: Ec2Moto, tmp_path: Path
) -> None:
    from provision.clock import SystemClock
    from provision.providers import get_target
    from provision.reconcile.provider import CreateRequest
    from provision.reconcile.spec import ProviderSpec

    def provider(**options: object) -> Any:
        spec = ProviderSpec(
            "cloud", "aws", options={"region": "us-east-1", **options}, base=tmp_path
        )
        return get_target("aws").create_provider(spec, SystemClock())

    made = provider().create_instance(
        CreateRequest(
            "shop/web/00001/1",
            "shop-web-00001",
            ec2.image(),
            {"instanceType": "t3.micro"},
            {TAG_CLUSTER: "shop"},
            1,
        )
    )
    (raw,) = live(ec2)
    assert provider().address(made, 7080) == (raw["PrivateIpAddress"], 7080)  # looked up by id
    public = provider(publicAddress=True).address(made, 9000)
    assert public == ((raw["PublicIpAddress"], 9000) if raw.get("PublicIpAddress") else None)


def test_user_data_carries_the_hostname_and_the_groups_tree() -> None:
    tree = json.loads(
        render_user_data(
            "shop-web-00001", '{"ssh": {"entries": {"authorized_keys": {"content": "k"}}}}'
        )
    )
    assert tree == {
        "hostname": {"content": "shop-web-00001"},
        "ssh": {"entries": {"authorized_keys": {"content": "k"}}},
    }
    assert json.loads(render_user_data("m", None)) == {"hostname": {"content": "m"}}
    # the machine's name wins over a hostname in the group's (shared) user data
    assert json.loads(render_user_data("m", {"hostname": {"content": "x"}}))["hostname"] == {
        "content": "m"
    }
