# What provision needs in Azure: one resource group holding the storage account images are
# uploaded to, the Compute Gallery and its image definition, and two custom roles scoped to that
# group only: "push" (provision push azure) and "daemon" (provision apply / daemon, type: azure).

terraform {
  required_version = ">= 1.5"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 3.90, < 5.0"
    }
  }
}

data "azurerm_subscription" "current" {}

resource "azurerm_resource_group" "provision" {
  name     = var.name_prefix
  location = var.location
  tags     = var.tags
}

resource "azurerm_storage_account" "images" {
  #checkov:skip=CKV2_AZURE_1:the VHDs are public boot images; Microsoft-managed keys encrypt them at rest
  #checkov:skip=CKV2_AZURE_33:pushes run from CI outside any VNet; access is limited by network rules and Entra ID
  #checkov:skip=CKV_AZURE_33:the account holds no queues; queue logging has nothing to log
  #checkov:skip=CKV_AZURE_59:pushes upload from outside Azure; the network rules allow only allowed_ip_ranges
  #checkov:skip=CKV_AZURE_206:uploaded VHDs are rebuilt from their specs; locally redundant storage is enough
  #checkov:skip=CKV2_AZURE_41:shared keys are disabled, so no SAS can be signed with them
  name                            = var.storage_account_name
  resource_group_name             = azurerm_resource_group.provision.name
  location                        = azurerm_resource_group.provision.location
  account_tier                    = "Standard"
  account_replication_type        = "LRS"
  account_kind                    = "StorageV2"
  min_tls_version                 = "TLS1_2"
  https_traffic_only_enabled      = true
  allow_nested_items_to_be_public = false
  shared_access_key_enabled       = false
  public_network_access_enabled   = true
  default_to_oauth_authentication = true
  tags                            = var.tags

  network_rules {
    default_action = "Deny"
    bypass         = ["AzureServices"]
    ip_rules       = var.allowed_ip_ranges
  }

  blob_properties {
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }

  sas_policy {
    expiration_period = "01.00:00:00"
  }
}

resource "azurerm_storage_container" "images" {
  #checkov:skip=CKV2_AZURE_21:blob read logging belongs to the subscription's diagnostic settings, not this module
  name                  = var.container_name
  storage_account_id    = azurerm_storage_account.images.id
  container_access_type = "private"
}

resource "azurerm_shared_image_gallery" "provision" {
  name                = replace(var.name_prefix, "-", "_")
  resource_group_name = azurerm_resource_group.provision.name
  location            = azurerm_resource_group.provision.location
  description         = "Images pushed by provision, one version per image digest"
  tags                = var.tags
}

resource "azurerm_shared_image" "image" {
  name                     = var.gallery_image
  gallery_name             = azurerm_shared_image_gallery.provision.name
  resource_group_name      = azurerm_resource_group.provision.name
  location                 = azurerm_resource_group.provision.location
  os_type                  = "Linux"
  hyper_v_generation       = var.hyper_v_generation
  architecture             = "x64"
  trusted_launch_supported = var.trusted_launch
  tags                     = var.tags

  identifier {
    publisher = "provision"
    offer     = var.gallery_image
    sku       = var.gallery_image
  }
}

locals {
  group_scope = azurerm_resource_group.provision.id

  # provision push azure: the blob upload, managed images, gallery versions (and the definition
  # when missing), and the long-running operations' status.
  push_actions = [
    "Microsoft.Compute/images/read",
    "Microsoft.Compute/images/write",
    "Microsoft.Compute/galleries/read",
    "Microsoft.Compute/galleries/write",
    "Microsoft.Compute/galleries/images/read",
    "Microsoft.Compute/galleries/images/write",
    "Microsoft.Compute/galleries/images/versions/read",
    "Microsoft.Compute/galleries/images/versions/write",
    "Microsoft.Compute/locations/operations/read",
    "Microsoft.Storage/storageAccounts/read",
  ]
  push_data_actions = [
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
  ]

  # provision apply / daemon with type: azure: VMs, their NICs and OS disks, in this group only.
  daemon_actions = [
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Compute/virtualMachines/write",
    "Microsoft.Compute/virtualMachines/delete",
    "Microsoft.Compute/disks/write",
    "Microsoft.Compute/disks/delete",
    "Microsoft.Compute/images/read",
    "Microsoft.Compute/galleries/images/versions/read",
    "Microsoft.Compute/locations/operations/read",
    "Microsoft.Network/networkInterfaces/read",
    "Microsoft.Network/networkInterfaces/write",
    "Microsoft.Network/networkInterfaces/delete",
    "Microsoft.Network/networkInterfaces/join/action",
    "Microsoft.Network/virtualNetworks/subnets/join/action",
    "Microsoft.Network/locations/operations/read",
  ]
}

resource "azurerm_role_definition" "push" {
  name        = "${var.name_prefix}-push"
  scope       = local.group_scope
  description = "provision push azure: upload VHDs, register managed images and gallery versions in one resource group"

  permissions {
    actions      = local.push_actions
    data_actions = local.push_data_actions
  }

  assignable_scopes = [local.group_scope]
}

resource "azurerm_role_definition" "daemon" {
  name        = "${var.name_prefix}-daemon"
  scope       = local.group_scope
  description = "provision daemon (type: azure): create, list and delete VMs, NICs and disks in one resource group"

  permissions {
    actions = local.daemon_actions
  }

  assignable_scopes = [local.group_scope]
}

resource "azurerm_role_assignment" "daemon" {
  count              = var.daemon_principal_id == null ? 0 : 1
  scope              = local.group_scope
  role_definition_id = azurerm_role_definition.daemon.role_definition_resource_id
  principal_id       = var.daemon_principal_id
}

resource "azurerm_role_assignment" "push" {
  count              = var.push_principal_id == null ? 0 : 1
  scope              = local.group_scope
  role_definition_id = azurerm_role_definition.push.role_definition_resource_id
  principal_id       = var.push_principal_id
}
