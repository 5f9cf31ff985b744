"""CLI subcommands: each module here exposes ``register(subparsers)``; cli.py finds them all."""
