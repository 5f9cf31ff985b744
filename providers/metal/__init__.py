"""The metal target: bare-metal machines network-booted by ``provision serve`` (``lab`` the
inventory, profiles and groups; ``boot`` the per-machine choice and iPXE scripts; ``files``
and ``server`` the HTTP side)."""
