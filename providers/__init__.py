"""Machine providers (qemu, aws, gcp, azure, pxe), imported as ``provision.providers``."""
