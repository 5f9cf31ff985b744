"""terraform/azure, checked without a Terraform binary: every file parses (python-hcl2), checkov
finds no failed check (each skip carries its reason), the storage account refuses public blob
access and TLS below 1.2, both roles are scoped to the one resource group, and every ARM
operation the azure provider and ``push_azure`` make against the fake ARM server (plus the
joins and reads their PUT bodies imply) is granted by the daemon and push roles, which grant
nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from arm_testkit import GROUP, LOCATION, SUBSCRIPTION, Arm
from azurite_testkit import Azurite
from terraform_testkit import (
    TERRAFORM,
    assert_checkov_passes,
    flat,
    one,
    parse_module,
    resource,
    ungranted,
    unused,
)
from vhd_testkit import write_vhd

from provision.providers.azure.provider import AzureProvider
from provision.providers.azure.push import AzurePush, push_azure
from provision.reconcile.provider import TAG_CLUSTER, CreateRequest, list_all
from provision.target import Artifact

MODULE = TERRAFORM / "azure"
SUBNET = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Network/virtualNetworks/v/subnets/s"


def local_list(name: str) -> list[str]:
    for block in parse_module(MODULE)["main.tf"]["locals"]:
        if name in block:
            return flat(block[name])
    raise AssertionError(f"no local {name}")


def action_of(method: str, path: str) -> str:
    """The Azure RBAC action a request needs: NS/type/subtype.../read|write|delete."""
    parts = urlsplit(path).path.strip("/").split("/")
    at = [i for i, p in enumerate(parts) if p.lower() == "providers"][-1]
    namespace, rest = parts[at + 1], parts[at + 2 :]
    types = rest[0::2]
    verb = {"GET": "read", "PUT": "write", "DELETE": "delete"}[method]
    return "/".join([namespace, *types, verb])


def implied(body: dict[str, Any]) -> set[str]:
    """What a PUT's references need besides the write: joins, reads of what it launches from."""
    text = json.dumps(body)
    needs = set()
    if "/subnets/" in text:
        needs.add("Microsoft.Network/virtualNetworks/subnets/join/action")
    if "/networkInterfaces/" in text:
        needs.add("Microsoft.Network/networkInterfaces/join/action")
    if "/providers/Microsoft.Compute/images/" in text:
        needs.add("Microsoft.Compute/images/read")
    if '"createOption": "FromImage"' in text:  # the VM's OS disk is made on the caller's behalf
        needs.add("Microsoft.Compute/disks/write")
    if "/storageAccounts/" in text:
        needs.add("Microsoft.Storage/storageAccounts/read")
    return needs


def test_every_file_parses_and_the_storage_account_is_locked_down() -> None:
    parsed = parse_module(MODULE)
    assert set(parsed) == {"main.tf", "variables.tf", "outputs.tf"}
    account = resource(MODULE, "azurerm_storage_account", "images")
    assert one(account["min_tls_version"]) == "TLS1_2"
    assert one(account["allow_nested_items_to_be_public"]) is False
    assert one(account["shared_access_key_enabled"]) is False
    assert one(one(account["network_rules"])["default_action"]) == "Deny"
    assert (
        one(resource(MODULE, "azurerm_storage_container", "images")["container_access_type"])
        == "private"
    )
    image = resource(MODULE, "azurerm_shared_image", "image")
    assert one(image["os_type"]) == "Linux" and one(image["architecture"]) == "x64"
    for role in ("push", "daemon"):
        definition = resource(MODULE, "azurerm_role_definition", role)
        assert one(definition["scope"]) == "${local.group_scope}"
        assert flat(definition["assignable_scopes"]) == ["${local.group_scope}"]
    assert "azurerm_resource_group.provision.id" in json.dumps(parsed["main.tf"]["locals"])


def test_checkov_finds_no_failed_check_and_every_skip_has_a_reason() -> None:
    assert_checkov_passes(MODULE, "AZURE", passed_at_least=10)


def _needed(arm: Arm, since: int = 0) -> set[str]:
    needed = {action_of(m, p) for m, p in arm.fake.requests[since:]}
    return needed | set().union(*(implied(r) for r in arm.fake.resources.values()))


def test_the_daemon_role_grants_every_call_the_provider_makes_and_no_other(arm: Arm) -> None:
    provider = AzureProvider("az", arm.clients(), GROUP, LOCATION, {"subnetId": SUBNET})
    image = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/images/web"
    made = provider.create_instance(
        CreateRequest(
            "c/web/1/1", "c-web-1", image, {"vmSize": "Standard_B2s"}, {TAG_CLUSTER: "c"}, 1
        )
    )
    arm.fake.poll_all()
    provider.address(made, 22)
    list_all(provider, {TAG_CLUSTER: "c"})
    needed = _needed(arm)
    provider.destroy_instance(made.id, 1)
    needed |= {action_of(m, p) for m, p in arm.fake.requests}
    actions = local_list("daemon_actions")
    assert ungranted(actions, needed) == set()
    assert unused(actions, needed) == [
        "Microsoft.Compute/galleries/images/versions/read"
    ]  # launching a gallery image instead


def test_the_push_role_grants_every_call_a_push_makes(
    arm: Arm, azurite: Azurite, tmp_path: Path
) -> None:
    container = azurite.new_container("terraform")
    vhd = write_vhd(tmp_path / "web.vhd", 8, [0])
    for n, (gallery, definition) in enumerate([(None, None), ("g", "web")]):
        artifact = Artifact("web", "sha256:" + f"{n:x}" * 64, "vhd", (vhd,), tmp_path / "m.json")
        push_azure(
            artifact,
            AzurePush(
                GROUP,
                "devstoreaccount1",
                "terraform",
                LOCATION,
                gallery=gallery,
                gallery_image=definition,
                version="1.0.0" if gallery else None,
            ),
            arm.clients(),
            container,
        )
    needed = _needed(arm)
    actions = local_list("push_actions")
    assert ungranted(actions, needed) == set()
    assert unused(actions, needed) == []
    assert set(local_list("push_data_actions")) == {
        f"Microsoft.Storage/storageAccounts/blobServices/containers/blobs/{verb}"
        for verb in ("read", "write", "delete")
    }
