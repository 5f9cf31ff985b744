"""The ``azure`` instance provider: virtual machines in one resource group.

- Create: deterministic names from the journal key (``NAME-<hash>`` for the VM, ``-nic`` and
  ``-osdisk`` for what it owns), so a retry after any failure finds or finishes the first
  attempt. A GET first; then a PUT of the NIC, then a PUT of the VM with the tags in the body
  (ownership at birth) and ``deleteOption: Delete`` on its OS disk and NIC. When the create
  fails, the NIC is deleted again unless the VM's own PUT went unanswered (the VM may exist and
  hold it): a slot the engine gives up on leaves nothing behind.
- List: the group's VMs a page at a time (``nextLink`` is the page token), kept when they carry
  all the tags asked for (ARM lists VMs without a tag filter).
- Destroy: DELETE the VM (waited on, bounded), then the NIC and the OS disk by name in case the
  platform kept them (Cluster API leaked both); a 404 or 204 counts as done.
- Address: the NIC's private IP.
Errors map through :func:`.errors.provider_error` (429 / 5xx / no answer / refusals).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.core.polling import LROPoller
from azure.mgmt.compute import models as compute_models
from azure.mgmt.network import models as network_models

from provision.providers.azure.clients import ArmClients
from provision.providers.azure.errors import provider_error, status_of
from provision.reconcile.provider import (
    CreateRequest,
    Instance,
    InstanceState,
    OutcomeUnknownError,
    Page,
    ProviderError,
    TransientProviderError,
)
from provision.retry import RetryLater, RetryPolicy
from provision.schema import Field, Schema, boolean, duration, integer, list_of, one_of, text
from provision.user_data import user_data_tree

T = TypeVar("T")
log = logging.getLogger(__name__)

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,88}[A-Za-z0-9_]|[A-Za-z0-9]"
_ARM_ID = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/.+"


def _os_disk(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping) or not set(value) <= {"sizeGb", "storageAccountType"}:
        return None
    size = value.get("sizeGb", 30)
    kind = value.get("storageAccountType", "Premium_LRS")
    if (
        integer(1, 32767)(size) is None
        or one_of(
            "Standard_LRS",
            "StandardSSD_LRS",
            "Premium_LRS",
            "StandardSSD_ZRS",
            "Premium_ZRS",
            "PremiumV2_LRS",
        )(kind)
        is None
    ):
        return None
    return {"sizeGb": size, "storageAccountType": kind}


USER_DATA_MAX = 65536  # bytes Azure takes in a VM's userData (after base64)


def _user_data(value: Any) -> str | dict[str, Any] | None:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and len(value.encode()) <= USER_DATA_MAX * 3 // 4:
        return value
    return None


def render_user_data(hostname: str, user_data: str | Mapping[str, Any] | None) -> str:
    """The VM's ``userData`` (base64), read by the image's metadata component from IMDS: a JSON
    tree holding ``hostname`` (the machine's name) and the group's user data (a tree as given,
    text as ``userdata``)."""
    tree = user_data_tree(hostname, user_data)
    encoded = base64.b64encode(json.dumps(tree, sort_keys=True).encode()).decode()
    if len(encoded) > USER_DATA_MAX:
        raise ProviderError(
            f"the user data of {hostname} is {len(encoded)} bytes in base64; Azure takes {USER_DATA_MAX}"
        )
    return encoded


OPTIONS = Schema(
    {
        "subscriptionId": Field(
            "a subscription id (a GUID)", text(r"[0-9a-fA-F-]{36}"), required=True
        ),
        "resourceGroup": Field("a resource group name", text(r"[-\w._()]{1,90}"), required=True),
        "location": Field("an Azure region (westeurope)", text(r"[a-z0-9]{2,40}"), required=True),
        "subnetId": Field(
            "a subnet's resource id", text(_ARM_ID), doc="groups without their own subnetId use it"
        ),
        "endpoint": Field(
            "the ARM endpoint URL (a sovereign cloud, a local stand-in)", text(r"https?://\S+")
        ),
        "storageAccount": Field(
            "a storage account name", text(r"[a-z0-9]{3,24}"), doc="where images are uploaded"
        ),
        "container": Field("a blob container name", text(r"[a-z0-9](-?[a-z0-9]){2,62}")),
        "storageResourceGroup": Field("a resource group name", text(r"[-\w._()]{1,90}")),
        "gallery": Field(
            "a Compute Gallery name",
            text(r"[A-Za-z0-9._]{1,80}"),
            doc="publish versions, not managed images",
        ),
        "galleryImage": Field("an image definition name", text(r"[A-Za-z0-9._-]{1,80}")),
        "deleteTimeout": Field("a duration up to 1h", duration(0.1, 3600)),
    }
)

PROPERTIES = Schema(
    {
        "vmSize": Field("a VM size (Standard_B2s)", text(r"[A-Za-z0-9_]{3,64}"), required=True),
        "subnetId": Field("a subnet's resource id", text(_ARM_ID)),
        "osDisk": Field(
            "{sizeGb: 1..32767, storageAccountType: Premium_LRS|StandardSSD_LRS|...}", _os_disk
        ),
        "priority": Field("Regular or Spot", one_of("Regular", "Spot")),
        "zones": Field('a list of zones ("1", "2", "3")', list_of(one_of("1", "2", "3"), 3)),
        "sshPublicKeys": Field(
            "a list of OpenSSH public keys", list_of(text(r"(ssh|ecdsa)-\S+ \S+( .*)?"), 16)
        ),
        "acceleratedNetworking": Field("true or false", boolean),
        "adminUsername": Field("a user name", text(r"[a-z_][a-z0-9_-]{0,31}")),
        "userData": Field(
            "text or a mapping (a JSON tree for the image's metadata component)", _user_data
        ),
    }
)

_STATES = {
    "Succeeded": InstanceState.RUNNING,
    "Deleting": InstanceState.TERMINATED,
    "Failed": InstanceState.RUNNING,
}


def vm_name(request: CreateRequest) -> str:
    """The VM's name: readable, and a function of the journal key only."""
    stem = re.sub(r"[^A-Za-z0-9-]", "-", request.name).strip("-")[:40] or "vm"
    return f"{stem}-{hashlib.sha256(request.key.encode()).hexdigest()[:10]}"


@dataclass
class AzureProvider:
    name: str
    arm: ArmClients
    resource_group: str
    location: str
    options: Mapping[str, Any]
    delete_timeout: float = 600.0
    create_timeout: float = 300.0

    # -- helpers -----------------------------------------------------------------------------

    def _call(self, what: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except AzureError as exc:
            raise provider_error(exc, what) from exc

    def _get(self, what: str, action: Callable[[], T]) -> T | None:
        try:
            return self._call(what, action)
        except ProviderError as exc:
            if (
                isinstance(exc.__cause__, ResourceNotFoundError)
                or status_of(exc.__cause__ or exc) == 404
            ):
                return None
            raise

    def _wait(self, poller: LROPoller[T], what: str, timeout: float) -> T:
        poller.wait(timeout)
        if not poller.done():
            raise TransientProviderError(f"{what}: still {poller.status()} after {timeout:g} s")
        return poller.result()

    def _id(self, kind: str, name: str) -> str:
        return (
            f"/subscriptions/{self.arm.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/{kind}/{name}"
        )

    def _instance(self, vm: Mapping[str, Any]) -> Instance:
        props = vm.get("properties") or {}
        image = ((props.get("storageProfile") or {}).get("imageReference") or {}).get("id", "")
        created = 0.0
        if props.get("timeCreated"):
            try:
                created = datetime.fromisoformat(
                    str(props["timeCreated"]).replace("Z", "+00:00")
                ).timestamp()
            except ValueError:
                created = 0.0
        state = _STATES.get(str(props.get("provisioningState", "")), InstanceState.PENDING)
        return Instance(
            str(vm["id"]), str(vm["name"]), dict(vm.get("tags") or {}), str(image), created, state
        )

    # -- the four operations --------------------------------------------------------------------

    def create_instance(self, request: CreateRequest) -> Instance:
        name = vm_name(request)
        compute, network = self.arm.compute, self.arm.network
        found = self._get(
            f"reading vm {name}", lambda: compute.virtual_machines.get(self.resource_group, name)
        )
        if found is not None:
            return self._instance(found.as_dict())
        props = request.properties
        subnet = props.get("subnetId") or self.options.get("subnetId")
        if not subnet:
            raise ProviderError(
                f"create vm {name}: no subnet",
                hint="set subnetId in the group's properties or the provider's options",
            )
        nic_name = f"{name}-nic"
        nic = {
            "location": self.location,
            "tags": dict(request.tags),
            "properties": {
                "enableAcceleratedNetworking": bool(props.get("acceleratedNetworking", False)),
                "ipConfigurations": [
                    {
                        "name": "ipconfig1",
                        "properties": {
                            "subnet": {"id": subnet},
                            "privateIPAllocationMethod": "Dynamic",
                            "primary": True,
                        },
                    }
                ],
            },
        }
        what = f"create nic {nic_name}"
        body = self._vm_body(
            request, name, self._id("Microsoft.Network/networkInterfaces", nic_name)
        )
        vm_sent = False
        try:
            self._call(
                what,
                lambda: self._wait(
                    network.network_interfaces.begin_create_or_update(
                        self.resource_group, nic_name, network_models.NetworkInterface(nic)
                    ),
                    what,
                    self.create_timeout,
                ),
            )
            vm_sent = True
            made = self._call(
                f"create vm {name}",
                lambda: compute.virtual_machines.begin_create_or_update(
                    self.resource_group, name, compute_models.VirtualMachine(body), polling=False
                ).result(),
            )
        except ProviderError as exc:
            # The VM may exist only when its own PUT went unanswered; in every other case the
            # NIC is taken back, so a slot the engine gives up on leaves nothing behind (a retry
            # makes it again under the same name).
            if not (vm_sent and isinstance(exc, OutcomeUnknownError)):
                self._take_back_nic(nic_name)
            raise
        return self._instance(made.as_dict())

    def _vm_body(self, request: CreateRequest, name: str, nic_id: str) -> dict[str, Any]:
        props = request.properties
        disk = _os_disk(props.get("osDisk", {})) or {
            "sizeGb": 30,
            "storageAccountType": "Premium_LRS",
        }
        user = str(props.get("adminUsername", "provision"))
        keys = [
            {"path": f"/home/{user}/.ssh/authorized_keys", "keyData": k}
            for k in props.get("sshPublicKeys", [])
        ]
        linux: dict[str, Any] = {"disablePasswordAuthentication": True, "provisionVMAgent": False}
        if keys:
            linux["ssh"] = {"publicKeys": keys}
        body: dict[str, Any] = {
            "location": self.location,
            "tags": dict(request.tags),
            "properties": {
                "hardwareProfile": {"vmSize": props.get("vmSize", "Standard_B2s")},
                "storageProfile": {
                    "imageReference": {"id": request.image},
                    "osDisk": {
                        "name": f"{name}-osdisk",
                        "createOption": "FromImage",
                        "deleteOption": "Delete",
                        "diskSizeGB": disk["sizeGb"],
                        "managedDisk": {"storageAccountType": disk["storageAccountType"]},
                    },
                },
                "osProfile": {
                    "computerName": name[:64],
                    "adminUsername": user,
                    "linuxConfiguration": linux,
                },
                "userData": render_user_data(request.name, props.get("userData")),
                "networkProfile": {
                    "networkInterfaces": [
                        {"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}
                    ]
                },
            },
        }
        if props.get("priority") == "Spot":
            body["properties"].update(
                {"priority": "Spot", "evictionPolicy": "Delete", "billingProfile": {"maxPrice": -1}}
            )
        if props.get("zones"):
            body["zones"] = list(props["zones"])
        return body

    def list_instances(self, tags: Mapping[str, str], page_token: str | None = None) -> Page:
        def one_page() -> tuple[list[dict[str, Any]], str | None]:
            pages = self.arm.compute.virtual_machines.list(self.resource_group).by_page(
                continuation_token=page_token
            )
            items = [vm.as_dict() for vm in next(pages, iter(()))]
            return items, getattr(pages, "continuation_token", None)

        vms, token = self._call(f"list vms in {self.resource_group}", one_page)
        wanted = tags.items()
        kept = tuple(
            self._instance(vm) for vm in vms if wanted <= dict(vm.get("tags") or {}).items()
        )
        return Page(kept, token or None)

    def destroy_instance(self, instance_id: str, epoch: int) -> None:
        name = instance_id.rstrip("/").rsplit("/", 1)[-1]
        compute = self.arm.compute
        self._delete(
            f"delete vm {name}",
            lambda: compute.virtual_machines.begin_delete(self.resource_group, name),
        )
        self._delete_nic(f"{name}-nic")
        disk = f"{name}-osdisk"
        self._delete(
            f"delete disk {disk}", lambda: compute.disks.begin_delete(self.resource_group, disk)
        )

    def _take_back_nic(self, nic_name: str) -> None:
        """Delete a NIC no VM uses, retrying briefly; a failure is logged, never raised (the
        caller is already reporting the failure that matters)."""

        def attempt() -> None:
            try:
                self._delete_nic(nic_name)
            except TransientProviderError as exc:
                raise RetryLater(str(exc), exc.retry_after) from exc

        try:
            RetryPolicy(attempts=5, total=30, initial=0.05, maximum=1).call(
                attempt, what=f"delete nic {nic_name}"
            )
        except (ProviderError, RetryLater) as exc:
            log.warning("could not delete the unused NIC %s: %s", nic_name, exc)

    def _delete_nic(self, nic_name: str) -> None:
        self._delete(
            f"delete nic {nic_name}",
            lambda: self.arm.network.network_interfaces.begin_delete(self.resource_group, nic_name),
        )

    def _delete(self, what: str, begin: Callable[[], LROPoller[Any]]) -> None:
        """Start a delete and wait for it (at most ``delete_timeout``); gone already is fine."""
        self._get(what, lambda: self._wait(begin(), what, self.delete_timeout))

    def address(self, instance: Instance, port: int) -> tuple[str, int] | None:
        nic_name = f"{instance.name}-nic"
        nic = self._get(
            f"read nic {nic_name}",
            lambda: self.arm.network.network_interfaces.get(self.resource_group, nic_name),
        )
        if nic is None:
            return None
        for config in (nic.as_dict().get("properties") or {}).get("ipConfigurations") or []:
            ip = (config.get("properties") or {}).get("privateIPAddress")
            if ip:
                return str(ip), port
        return None
