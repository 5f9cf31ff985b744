from azurite_testkit import azurite  # noqa: F401  (the session fixture)
