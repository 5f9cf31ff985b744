output "resource_group" {
  description = "--resource-group, and the azure provider's resourceGroup option"
  value       = azurerm_resource_group.provision.name
}

output "storage_account" {
  description = "--storage-account"
  value       = azurerm_storage_account.images.name
}

output "container" {
  description = "--container"
  value       = azurerm_storage_container.images.name
}

output "gallery" {
  description = "--gallery"
  value       = azurerm_shared_image_gallery.provision.name
}

output "gallery_image" {
  description = "--gallery-image"
  value       = azurerm_shared_image.image.name
}

output "push_role_id" {
  description = "The push role's definition id"
  value       = azurerm_role_definition.push.role_definition_resource_id
}

output "daemon_role_id" {
  description = "The daemon role's definition id"
  value       = azurerm_role_definition.daemon.role_definition_resource_id
}
