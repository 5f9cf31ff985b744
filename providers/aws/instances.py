"""The ``aws`` provider of the reconcile engine: a cluster's machines as EC2 instances.

- create: ONE ``RunInstances`` (MinCount = MaxCount = 1) whose ``ClientToken`` is derived from
  the journal key (so a retry after a crash or a time-out returns the instance the first call
  made, never a second one), with every ownership tag and ``Name`` on the instance AND its
  volumes in ``TagSpecifications`` (owned from birth: no second call that a crash could skip),
  and user data carrying the machine name (hostname) and the group's user data;
- list: ``DescribeInstances`` filtered by the ownership tags and the live states, one page
  (``MaxResults`` / ``NextToken``) per call;
- destroy: ``TerminateInstances``; an instance that is gone (or never existed) counts as done;
- address: the private IP (the public one with the ``publicAddress`` option) and the port.

Fencing: EC2 cannot refuse a stale epoch; each instance carries the ``provision-epoch`` tag of
the writer that made it, and the journal's guard fences. Errors map onto the engine's classes
in :mod:`provision.providers.aws.session`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

import botocore.exceptions

from provision.clock import Clock
from provision.errors import UsageError
from provision.providers.aws.properties import (
    USER_DATA_MAX,
    AwsOptions,
    MachineProperties,
    is_instance_profile_arn,
    parse_machine_properties,
    parse_options,
)
from provision.providers.aws.session import SessionSettings, call_aws, classify_error, create_client
from provision.reconcile.provider import (
    CreateRequest,
    Instance,
    InstanceState,
    Page,
    ProviderError,
)
from provision.reconcile.spec import ProviderSpec
from provision.user_data import user_data_tree

LIVE_STATES = ("pending", "running", "stopping", "stopped")
GONE = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
_STATES = {
    "pending": InstanceState.PENDING,
    "shutting-down": InstanceState.TERMINATED,
    "terminated": InstanceState.TERMINATED,
}


def client_token(key: str) -> str:
    """EC2's idempotency token for a journal key: deterministic, 64 ASCII characters at most."""
    return hashlib.sha256(key.encode()).hexdigest()  # 64 hex digits


def render_user_data(hostname: str, user_data: str | Mapping[str, Any] | None) -> str:
    """The instance's user data: a JSON tree the metadata component expands into /run/config:
    ``hostname`` (the machine's name) plus the group's user data (a tree as given, or text as
    the file ``userdata``, where the component puts plain user data too)."""
    tree = user_data_tree(hostname, user_data)
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > USER_DATA_MAX:
        raise UsageError(
            f"aws: the user data of {hostname} is {len(text.encode())} bytes; EC2 takes {USER_DATA_MAX}"
        )
    return text


def run_instances_params(request: CreateRequest, props: MachineProperties) -> dict[str, Any]:
    """The one RunInstances call of a create."""
    tags = [{"Key": k, "Value": v} for k, v in sorted(request.tags.items())] + [
        {"Key": "Name", "Value": request.name}
    ]
    params: dict[str, Any] = {
        "ImageId": request.image,
        "InstanceType": props.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": client_token(request.key),
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
        "UserData": render_user_data(request.name, props.user_data),
        "MetadataOptions": {
            "HttpTokens": props.http_tokens,
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": props.hop_limit,
        },
    }
    if props.subnet_id:
        params["SubnetId"] = props.subnet_id
    if props.security_group_ids:
        params["SecurityGroupIds"] = list(props.security_group_ids)
    if props.key_name:
        params["KeyName"] = props.key_name
    if props.iam_instance_profile:
        arn = is_instance_profile_arn(props.iam_instance_profile)
        params["IamInstanceProfile"] = {"Arn" if arn else "Name": props.iam_instance_profile}
    if props.root_volume is not None:
        ebs: dict[str, Any] = {"VolumeType": props.root_volume.type, "DeleteOnTermination": True}
        if props.root_volume.size is not None:
            ebs["VolumeSize"] = props.root_volume.size
        if props.root_volume.iops is not None:
            ebs["Iops"] = props.root_volume.iops
        params["BlockDeviceMappings"] = [{"DeviceName": props.root_volume.device, "Ebs": ebs}]
    if props.market == "spot":
        params["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            },
        }
    return params


class AwsProvider:
    """EC2 instances as the engine's machines (see the module docstring)."""

    def __init__(self, name: str, options: AwsOptions, clock: Clock, ec2: Any = None) -> None:
        self.name = name
        self.options = options
        self.clock = clock
        self.settings = SessionSettings(
            options.region, options.profile, options.endpoint, read_timeout=options.read_timeout
        )
        self.ec2 = ec2 if ec2 is not None else create_client(self.settings, "ec2")
        self._addresses: dict[str, tuple[str | None, str | None]] = {}  # id -> (private, public)
        self._lock = threading.Lock()

    # -- the Provider protocol ------------------------------------------------------------

    def create_instance(self, request: CreateRequest) -> Instance:
        try:
            params = run_instances_params(request, parse_machine_properties(request.properties))
        except UsageError as exc:  # a request EC2 would refuse: this create fails for good
            raise ProviderError(str(exc), hint="fix the group's properties") from exc
        answer = call_aws("RunInstances", self.ec2.run_instances, **params)
        made = answer.get("Instances") or []
        if len(made) != 1:
            raise ProviderError(
                f"aws RunInstances: {len(made)} instances in the answer, expected 1"
            )
        return self._instance(made[0])

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(tags.items())]
        filters.append({"Name": "instance-state-name", "Values": list(LIVE_STATES)})
        params: dict[str, Any] = {"Filters": filters, "MaxResults": self.options.page_size}
        if page_token:
            params["NextToken"] = page_token
        answer = call_aws("DescribeInstances", self.ec2.describe_instances, **params)
        found = [
            self._instance(raw)
            for reservation in answer.get("Reservations", [])
            for raw in reservation.get("Instances", [])
        ]
        found = [i for i in found if all(i.tags.get(k) == v for k, v in tags.items())]
        return Page(tuple(found), answer.get("NextToken") or None)

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        try:
            self.ec2.terminate_instances(InstanceIds=[instance_id])
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in GONE:
                raise classify_error("TerminateInstances", exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise classify_error("TerminateInstances", exc) from exc
        with self._lock:
            self._addresses.pop(instance_id, None)

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        with self._lock:
            known = self._addresses.get(instance.id)
        if known is None:
            answer = call_aws(
                "DescribeInstances", self.ec2.describe_instances, InstanceIds=[instance.id]
            )
            for reservation in answer.get("Reservations", []):
                for raw in reservation.get("Instances", []):
                    self._instance(raw)
            with self._lock:
                known = self._addresses.get(instance.id)
        if known is None:
            return None
        private, public = known
        ip = public if self.options.public_address else private
        return (ip, port) if ip else None

    # -- helpers --------------------------------------------------------------------------

    def _instance(self, raw: Mapping[str, Any]) -> Instance:
        tags = {str(t["Key"]): str(t["Value"]) for t in raw.get("Tags", [])}
        instance_id = str(raw["InstanceId"])
        with self._lock:
            self._addresses[instance_id] = (raw.get("PrivateIpAddress"), raw.get("PublicIpAddress"))
        launched: Any = raw.get("LaunchTime")
        created = float(launched.timestamp()) if launched is not None else self.clock.now()
        state = _STATES.get(str(raw.get("State", {}).get("Name", "")), InstanceState.RUNNING)
        return Instance(
            instance_id,
            tags.get("Name", instance_id),
            tags,
            str(raw.get("ImageId", "")),
            created,
            state,
        )


def create_aws_provider(spec: ProviderSpec, clock: Clock) -> AwsProvider:
    """The provider for a cluster spec's ``type: aws`` provider (options checked at load)."""
    return AwsProvider(spec.name, parse_options(spec.options), clock)
