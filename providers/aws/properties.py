"""The schemas of the aws target: a provider's ``options`` and an aws group's ``properties``,
checked when the cluster spec loads (every problem located), and their typed form.

Provider options::

    region: eu-west-1            (required)
    profile: NAME                (a profile of the AWS config; default: boto3's own chain)
    endpoint: URL                (default: the SDK's own settings, AWS_ENDPOINT_URL...)
    publicAddress: false         (health checks reach the public IP instead of the private one)
    readTimeout: 30s             (per request; a request with no answer in time has an unknown
                                  outcome and is retried with the same ClientToken)
    pageSize: 100                (DescribeInstances MaxResults, 5 to 1000)

Group properties::

    instanceType: t3.micro       (required)
    subnetId: subnet-...
    securityGroupIds: [sg-...]
    keyName: my-key
    iamInstanceProfile: NAME | arn:aws:iam::...:instance-profile/NAME
    rootVolume: {size: 8, type: gp3, iops: 3000, device: /dev/xvda}
    market: on-demand | spot     (default on-demand)
    metadata: {httpTokens: required | optional, hopLimit: 1}   (default required: IMDSv2 only)
    userData: "..." | {JSON tree} (what the metadata component writes into /run/config)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provision import schema
from provision.errors import UsageError
from provision.schema import Field, Parser, Schema, check_mapping

REGION = r"[a-z]{2}(-[a-z]+)+-\d{1,2}"
USER_DATA_MAX = 16384  # EC2's limit on user data, before base64


def mapping(of: Schema) -> Parser:
    """A nested mapping checked against ``of`` (the first problem is named in the message)."""

    def parse(value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping) or check_mapping(of, value):
            return None
        return dict(value)

    return parse


def _user_data(value: Any) -> str | dict[str, Any] | None:
    if isinstance(value, str):
        return value if len(value.encode()) <= USER_DATA_MAX else None
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return dict(value)
    return None


ROOT_VOLUME = Schema(
    {
        "size": Field("a whole number of GiB from 1 to 16384", schema.integer(1, 16384)),
        "type": Field(
            "one of gp3, gp2, io1, io2, st1, sc1, standard",
            schema.one_of("gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"),
            doc="default gp3",
        ),
        "iops": Field("a whole number from 100 to 256000", schema.integer(100, 256_000)),
        "device": Field(
            "a device name like /dev/xvda",
            schema.text(r"/dev/[a-z0-9]{2,16}"),
            doc="default /dev/xvda",
        ),
    }
)
METADATA = Schema(
    {
        "httpTokens": Field(
            "required or optional",
            schema.one_of("required", "optional"),
            doc="default required (IMDSv2)",
        ),
        "hopLimit": Field("a whole number from 1 to 64", schema.integer(1, 64), doc="default 1"),
    }
)

OPTIONS = Schema(
    {
        "region": Field(
            "an AWS region like eu-west-1", schema.text(REGION, max_len=32), required=True
        ),
        "profile": Field(
            "a profile name of the AWS config", schema.text(r"[A-Za-z0-9_.@+-]{1,128}")
        ),
        "endpoint": Field("an http(s) URL", schema.text(r"https?://[^\s]{1,2000}")),
        "publicAddress": Field(
            "true or false", schema.boolean, doc="default false: the private IP"
        ),
        "readTimeout": Field(
            "a duration from 1s to 10m", schema.duration(1, 600), doc="default 30s"
        ),
        "pageSize": Field(
            "a whole number from 5 to 1000", schema.integer(5, 1000), doc="default 100"
        ),
    }
)

PROPERTIES = Schema(
    {
        "instanceType": Field(
            "an EC2 instance type like t3.micro",
            schema.text(r"[a-z][a-z0-9-]*\.[a-z0-9]+", max_len=64),
            required=True,
        ),
        "subnetId": Field(
            "a subnet id like subnet-0123abcd", schema.text(r"subnet-[0-9a-f]{8,17}")
        ),
        "securityGroupIds": Field(
            "a list of security group ids like sg-0123abcd",
            schema.list_of(schema.text(r"sg-[0-9a-f]{8,17}"), max_items=16),
        ),
        "keyName": Field("a key pair name", schema.text(r"[^\s]{1,255}")),
        "iamInstanceProfile": Field(
            "an instance profile name or ARN", schema.text(r"[\w+=,.@:/-]{1,2048}")
        ),
        "rootVolume": Field("a mapping of size (GiB), type, iops, device", mapping(ROOT_VOLUME)),
        "market": Field(
            "on-demand or spot", schema.one_of("on-demand", "spot"), doc="default on-demand"
        ),
        "metadata": Field(
            "a mapping of httpTokens (required | optional) and hopLimit",
            mapping(METADATA),
            doc="default httpTokens: required",
        ),
        "userData": Field(
            f"text of at most {USER_DATA_MAX} bytes or a mapping (a JSON tree)", _user_data
        ),
    }
)


@dataclass(frozen=True)
class AwsOptions:
    region: str
    profile: str | None = None
    endpoint: str | None = None
    public_address: bool = False
    read_timeout: float = 30.0
    page_size: int = 100


@dataclass(frozen=True)
class RootVolume:
    size: int | None = None
    type: str = "gp3"
    iops: int | None = None
    device: str = "/dev/xvda"


@dataclass(frozen=True)
class MachineProperties:
    """An aws group's ``properties``, checked."""

    instance_type: str
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    key_name: str | None = None
    iam_instance_profile: str | None = None
    root_volume: RootVolume | None = None
    market: str = "on-demand"
    http_tokens: str = "required"
    hop_limit: int = 1
    user_data: str | dict[str, Any] | None = None


def _checked(schema_: Schema, value: Mapping[str, Any], what: str) -> None:
    problems = check_mapping(schema_, value)
    if problems:
        first = problems[0]
        where = ".".join(str(p) for p in first.path)
        raise UsageError(f"aws {what}: {where + ': ' if where else ''}{first.message}")


def parse_options(options: Mapping[str, Any]) -> AwsOptions:
    """The provider ``options``, checked (the loader checked them already; this is for callers
    that build a provider from a mapping of their own). ``pageSize`` below 5 is let through
    here for stand-ins that page in twos; EC2 itself refuses it and the spec schema too."""
    relaxed = dict(options)
    page_size = relaxed.pop("pageSize", 100)
    _checked(OPTIONS, relaxed, "options")
    if not (isinstance(page_size, int) and 1 <= page_size <= 1000):
        raise UsageError(
            f"aws options: pageSize: must be a whole number from 5 to 1000, not {page_size!r}"
        )
    read_timeout = schema.duration(1, 600)(relaxed.get("readTimeout", 30.0))
    return AwsOptions(
        region=str(relaxed["region"]),
        profile=relaxed.get("profile"),
        endpoint=relaxed.get("endpoint"),
        public_address=bool(relaxed.get("publicAddress", False)),
        read_timeout=float(read_timeout if read_timeout is not None else 30.0),
        page_size=page_size,
    )


def parse_machine_properties(properties: Mapping[str, Any]) -> MachineProperties:
    """A group's ``properties`` as a :class:`MachineProperties`; a UsageError names the first problem."""
    _checked(PROPERTIES, properties, "properties")
    root = properties.get("rootVolume")
    meta = properties.get("metadata") or {}
    return MachineProperties(
        instance_type=str(properties["instanceType"]),
        subnet_id=properties.get("subnetId"),
        security_group_ids=tuple(properties.get("securityGroupIds") or ()),
        key_name=properties.get("keyName"),
        iam_instance_profile=properties.get("iamInstanceProfile"),
        root_volume=RootVolume(
            root.get("size"),
            root.get("type", "gp3"),
            root.get("iops"),
            root.get("device", "/dev/xvda"),
        )
        if root is not None
        else None,
        market=str(properties.get("market", "on-demand")),
        http_tokens=str(meta.get("httpTokens", "required")),
        hop_limit=int(meta.get("hopLimit", 1)),
        user_data=_user_data(properties["userData"]) if "userData" in properties else None,
    )


def is_instance_profile_arn(value: str) -> bool:
    return re.match(r"arn:aws[a-z-]*:iam::", value) is not None
