from arm_testkit import arm  # noqa: F401  (fixtures)
from azurite_testkit import azurite  # noqa: F401
