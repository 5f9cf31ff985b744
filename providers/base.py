"""The Provider Protocol every provider implements (defined in provision.reconcile.provider)."""

from provision.reconcile.provider import (
    TAG_CLUSTER,
    TAG_CONFIG,
    TAG_EPOCH,
    TAG_GROUP,
    TAG_SLOT,
    CreateRequest,
    HealthSource,
    HealthState,
    Instance,
    InstanceState,
    OutcomeUnknownError,
    Page,
    Provider,
    ProviderError,
    RateLimitedError,
    StaleEpochError,
    TransientProviderError,
    list_all,
)

__all__ = [
    "TAG_CLUSTER", "TAG_CONFIG", "TAG_EPOCH", "TAG_GROUP", "TAG_SLOT", "CreateRequest", "HealthSource",
    "HealthState", "Instance", "InstanceState", "OutcomeUnknownError", "Page", "Provider", "ProviderError",
    "RateLimitedError", "StaleEpochError", "TransientProviderError", "list_all",
]
