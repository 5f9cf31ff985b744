"""The image spec stage: LinuxKit YAML read with marks (``source``), the field tables and their
checks (``fields``, ``checks``), the dataclasses and per-file parse (``image``), merging several
files (``merge``) and the entry point :func:`provision.spec.load.load_spec`."""
