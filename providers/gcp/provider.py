"""The ``gcp`` provider: a cluster's machines as Compute Engine instances in one zone.

- create: ``instances.insert`` with a deterministic instance name (readable, plus the hash of
  the journal key) and ``requestId = uuid5(key)`` (GCE returns the first request's operation for
  a repeated id), ownership labels in the body, then the zone operation waited on with a
  ZoneOperationsClient built with the same endpoint; a 409 for the name means a previous call
  made it, and that machine is returned.
- list: ``instances.list`` with a label filter, ``maxResults`` = ``pageSize``, ``pageToken``.
- destroy: ``instances.delete``; a 404 counts as done. Not waited on: a STOPPING machine is
  reported terminated.
- address: the instance's internal IP (the first network interface).

The image a machine was created from is kept in its metadata (``provision-image``), since an
instance's disks do not say. google-cloud-compute is imported by the calls (importing this
module, its schemas included, does not: see :mod:`.clients`).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc

from provision import schema
from provision.clock import Clock
from provision.errors import UsageError
from provision.providers.gcp.clients import (
    GceClients,
    call,
    credentials,
    gce_clients,
    map_error,
    wait_operation,
)
from provision.reconcile.provider import CreateRequest, Instance, InstanceState, Page, ProviderError
from provision.schema import Field, Schema, check_mapping

if TYPE_CHECKING:
    from google.cloud import compute_v1

    from provision.reconcile.spec import ProviderSpec

NAMESPACE = uuid.UUID("0f6a3c2e-8d7b-4e59-b1a4-2c9e5d7f6a10")  # requestIds of instance creates
IMAGE_KEY = "provision-image"
PROJECT = r"[a-z][-a-z0-9]{4,28}[a-z0-9]"
ZONE = r"[a-z]+-[a-z]+\d+-[a-z]"
LOCAL = r"https?://[^\s/]+(:\d{1,5})?/?"
DISK_TYPES = (
    "pd-standard",
    "pd-balanced",
    "pd-ssd",
    "pd-extreme",
    "hyperdisk-balanced",
    "hyperdisk-throughput",
)
STATES = {
    "PROVISIONING": InstanceState.PENDING,
    "STAGING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "REPAIRING": InstanceState.RUNNING,
}


def _disk(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping) or not set(value) <= {"sizeGb", "type"}:
        return None
    size, kind = value.get("sizeGb", 10), value.get("type", "pd-balanced")
    if schema.integer(10, 65536)(size) is None or schema.one_of(*DISK_TYPES)(kind) is None:
        return None
    return {"sizeGb": size, "type": kind}


def _metadata(value: Any) -> dict[str, str] | None:
    if not isinstance(value, Mapping) or len(value) > 128:
        return None
    ok = all(
        isinstance(k, str)
        and re.fullmatch(r"[a-zA-Z0-9_-]{1,128}", k)
        and k != IMAGE_KEY
        and isinstance(v, str)
        and len(v) <= 256 * 1024
        for k, v in value.items()
    )
    return dict(value) if ok else None


OPTIONS = Schema(
    {
        "project": Field("a GCP project id", schema.text(PROJECT), required=True),
        "zone": Field("a zone, like us-central1-a", schema.text(ZONE), required=True),
        "bucket": Field(
            "a Cloud Storage bucket name (where image tarballs are uploaded)",
            schema.text(r"[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]"),
            doc="needed to build image specs",
        ),
        "family": Field("an image family name", schema.text(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")),
        "endpoint": Field(
            "an http(s) URL of the Compute Engine API",
            schema.text(LOCAL, 256),
            doc="default: the public API; a private endpoint or a local stand-in",
        ),
        "anonymous": Field(
            "true or false", schema.boolean, doc="no credentials (local stand-ins only)"
        ),
        "pageSize": Field(
            "a whole number from 1 to 500", schema.integer(1, 500), doc="default 500"
        ),
        "requestTimeout": Field(
            "a duration from 100ms to 10m", schema.duration(0.1, 600.0), doc="default 60s"
        ),
        "operationTimeout": Field(
            "a duration from 1s to 1h", schema.duration(1.0, 3600.0), doc="default 10m"
        ),
    }
)
PROPERTIES = Schema(
    {
        "machineType": Field(
            "a machine type, like e2-small", schema.text(r"[a-z0-9][-a-z0-9]{0,62}"), required=True
        ),
        "network": Field("a network name or URL", schema.text(max_len=1024)),
        "subnetwork": Field("a subnetwork name or URL", schema.text(max_len=1024)),
        "serviceAccount": Field("a service account email", schema.text(r"[^@\s]+@[^@\s]+", 256)),
        "scopes": Field(
            "a list of OAuth scope URLs", schema.list_of(schema.text(r"https://\S+", 256), 32)
        ),
        "disk": Field(f"{{sizeGb: 10..65536, type: {' | '.join(DISK_TYPES)}}}", _disk),
        "provisioning": Field(
            "standard or spot", schema.one_of("standard", "spot"), doc="default standard"
        ),
        "networkTags": Field(
            "a list of network tags",
            schema.list_of(schema.text(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"), 64),
        ),
        "metadata": Field(
            "a mapping of metadata keys to strings (user-data, ssh-keys, ...)", _metadata
        ),
    }
)


def instance_name(key: str, name: str) -> str:
    """Readable (the engine's machine name) and unique to the journal key."""
    readable = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not readable or not readable[0].isalpha():
        readable = "m-" + readable
    return f"{readable[:52].rstrip('-')}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def label_filter(tags: Mapping[str, str]) -> str:
    return " AND ".join(f'labels.{k} = "{v}"' for k, v in sorted(tags.items()))


def _created(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


@dataclass
class GcpProvider:
    name: str
    project: str
    zone: str
    clients: GceClients
    options: Mapping[str, Any]
    page_size: int = 500
    request_timeout: float = 60.0
    operation_timeout: float = 600.0

    def _image_url(self, image: str) -> str:
        return image if "/" in image else f"projects/{self.project}/global/images/{image}"

    def _body(self, request: CreateRequest, name: str) -> compute_v1.Instance:
        from google.cloud import compute_v1

        props = request.properties
        disk = _disk(props.get("disk", {})) or {"sizeGb": 10, "type": "pd-balanced"}
        items = [
            compute_v1.Items(key=k, value=v)
            for k, v in sorted((_metadata(props.get("metadata", {})) or {}).items())
        ]
        items.append(compute_v1.Items(key=IMAGE_KEY, value=request.image))
        nic = compute_v1.NetworkInterface(
            network=str(props.get("network", "global/networks/default"))
        )
        if props.get("subnetwork"):
            nic.subnetwork = str(props["subnetwork"])
        body = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{self.zone}/machineTypes/{props.get('machineType', 'e2-small')}",
            labels=dict(request.tags),
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=self._image_url(request.image),
                        disk_size_gb=int(disk["sizeGb"]),
                        disk_type=f"zones/{self.zone}/diskTypes/{disk['type']}",
                    ),
                )
            ],
            network_interfaces=[nic],
            metadata=compute_v1.Metadata(items=items),
        )
        if props.get("serviceAccount"):
            body.service_accounts = [
                compute_v1.ServiceAccount(
                    email=str(props["serviceAccount"]),
                    scopes=list(
                        props.get("scopes", ["https://www.googleapis.com/auth/cloud-platform"])
                    ),
                )
            ]
        if props.get("provisioning") == "spot":
            body.scheduling = compute_v1.Scheduling(
                provisioning_model="SPOT", instance_termination_action="DELETE"
            )
        if props.get("networkTags"):
            body.tags = compute_v1.Tags(items=list(props["networkTags"]))
        return body

    def _instance(self, found: compute_v1.Instance) -> Instance:
        image = (
            next((i.value for i in found.metadata.items if i.key == IMAGE_KEY), "")
            if found.metadata
            else ""
        )
        state = STATES.get(found.status, InstanceState.TERMINATED)
        return Instance(
            found.name,
            found.name,
            dict(found.labels),
            image,
            _created(found.creation_timestamp),
            state,
        )

    def _get(self, name: str) -> compute_v1.Instance:
        return call(
            "instances.get",
            lambda: self.clients.instances.get(
                project=self.project,
                zone=self.zone,
                instance=name,
                retry=None,
                timeout=self.request_timeout,
            ),
        )

    def create_instance(self, request: CreateRequest) -> Instance:
        from google.cloud import compute_v1

        name = instance_name(request.key, request.name)
        insert = compute_v1.InsertInstanceRequest(
            project=self.project,
            zone=self.zone,
            instance_resource=self._body(request, name),
            request_id=str(uuid.uuid5(NAMESPACE, request.key)),
        )
        try:
            operation = self.clients.instances.insert(
                request=insert, retry=None, timeout=self.request_timeout
            )
        except gexc.Conflict:  # a previous call with this key made it (its requestId had expired)
            return self._instance(self._get(name))
        except Exception as exc:  # noqa: BLE001 (mapped to the class that decides the retry)
            raise map_error(exc, f"instances.insert {name}") from None
        wait_operation(
            self.clients,
            self.project,
            operation,
            zone=self.zone,
            timeout=self.operation_timeout,
            request_timeout=self.request_timeout,
            what=f"instances.insert {name}",
        )
        return self._instance(self._get(name))

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        from google.cloud import compute_v1

        listing = compute_v1.ListInstancesRequest(
            project=self.project,
            zone=self.zone,
            filter=label_filter(tags),
            max_results=self.page_size,
            page_token=page_token or "",
        )

        def first_page() -> compute_v1.InstanceList:
            pager = self.clients.instances.list(
                request=listing, retry=None, timeout=self.request_timeout
            )
            page: compute_v1.InstanceList = next(iter(pager.pages))
            return page

        page = call("instances.list", first_page)
        return Page(tuple(self._instance(i) for i in page.items), page.next_page_token or None)

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        from google.cloud import compute_v1

        delete = compute_v1.DeleteInstanceRequest(
            project=self.project,
            zone=self.zone,
            instance=instance_id,
            request_id=str(uuid.uuid5(NAMESPACE, f"delete/{instance_id}")),
        )
        try:
            self.clients.instances.delete(request=delete, retry=None, timeout=self.request_timeout)
        except gexc.NotFound:
            return
        except Exception as exc:  # noqa: BLE001
            raise map_error(exc, f"instances.delete {instance_id}") from None

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        try:
            found = self._get(instance.id)
        except ProviderError:
            return None
        ips = [nic.network_i_p for nic in found.network_interfaces if nic.network_i_p]
        return (ips[0], port) if ips else None


def create_gcp_provider(spec: ProviderSpec, clock: Clock) -> GcpProvider:
    options = spec.options
    problems = check_mapping(OPTIONS, options)
    if problems:
        raise UsageError(
            f"provider {spec.name!r}: "
            + "; ".join(
                "options" + "".join(f".{part}" for part in v.path) + f": {v.message}"
                for v in problems
            )
        )
    endpoint = options.get("endpoint")
    if options.get("anonymous") and not endpoint:
        raise UsageError(
            f"provider {spec.name!r}: options.anonymous needs options.endpoint (a local stand-in)"
        )
    clients = gce_clients(
        str(endpoint) if endpoint else None, credentials(bool(options.get("anonymous")))
    )
    return GcpProvider(
        spec.name,
        str(options["project"]),
        str(options["zone"]),
        clients,
        dict(options),
        page_size=int(options.get("pageSize", 500)),
        request_timeout=schema.duration(0.1, 600.0)(options.get("requestTimeout", 60)) or 60.0,
        operation_timeout=schema.duration(1.0, 3600.0)(options.get("operationTimeout", 600))
        or 600.0,
    )
