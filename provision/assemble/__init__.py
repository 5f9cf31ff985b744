"""The assemble stage: image layers to one canonical tree (``layers``, ``tree``), each
container's runtime config (``runtime_config``), identical files stored once (``dedupe``) and
the whole root (``root``: :func:`provision.assemble.root.assemble_root`)."""
