"""The reconcile engine: cluster specs, plans, the journal, the daemon and the Provider Protocol.

Public API (import from the modules):
  spec:     parse_cluster_spec, load_cluster_spec, ClusterSpec, GroupSpec, config_digest
  provider: Provider, HealthSource, Instance, CreateRequest, Page, list_all, TAG_*, the error classes
  image:    GroupImages (a group's image id: planned, or built and published by its target)
  registry: create_providers                               (providers made by their targets)
  engine:   Engine (plan, reconcile, converge)
  plan:     ClusterPlan, render_plan_table
  journal:  Store (Protocol), SqliteStore
  daemon:   Daemon, DaemonOptions
"""
