"""The reconcile engine: cluster specs, plans, the journal, the daemon and the Provider Protocol.

Public API (import from the modules):
  spec:     parse_cluster_spec, load_cluster_spec, ClusterSpec, GroupSpec, config_digest
  provider: Provider, HealthSource, Instance, CreateRequest, Page, list_all, TAG_*, the error classes
  image:    resolve_group_image, register_image_builder   (the build pipeline's seam)
  registry: create_providers, register_provider            (provider types by name)
  engine:   Engine (plan, reconcile, converge)
  plan:     ClusterPlan, render_plan_table
  journal:  Store (Protocol), SqliteStore
  daemon:   Daemon, DaemonOptions
"""
