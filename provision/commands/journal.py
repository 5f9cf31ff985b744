"""``provision journal export|import``: move a journal between SQLite and etcd."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from provision.errors import UsageError
from provision.fsutil import write_bytes_atomic
from provision.reconcile.stores import describe_store, open_journal
from provision.reconcile.transfer import export_journal, import_journal


def register(subparsers: Any) -> None:
    journal = subparsers.add_parser(
        "journal", help="move a cluster journal between SQLite and etcd"
    )
    actions = journal.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = actions.add_parser("export", help="write a journal as JSON (stdout, or --out)")
    export.add_argument("journal", help="a SQLite journal file or etcd://HOST:PORT,.../PREFIX")
    export.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    export.set_defaults(func=run_export)
    load = actions.add_parser("import", help="load an export into an empty journal")
    load.add_argument("journal", help="a SQLite journal file or etcd://HOST:PORT,.../PREFIX")
    load.add_argument("file", nargs="?", default="-", help="the export (default: stdin)")
    load.set_defaults(func=run_import)


def run_export(args: argparse.Namespace) -> int:
    if not args.journal.startswith("etcd://") and not Path(args.journal).is_file():
        raise UsageError(f"journal {args.journal}: no such file")
    store = open_journal(args.journal)
    try:
        text = json.dumps(export_journal(store), sort_keys=True) + "\n"
    finally:
        store.close()
    if args.out:
        write_bytes_atomic(Path(args.out), text.encode())
    else:
        sys.stdout.write(text)
    return 0


def _read_regular_file(name: str) -> str:
    """A regular file's text (a FIFO would block, /dev/zero never end: refused)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{name}: not a regular file (give the export's file, or - for stdin)")
        data = stream.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name}: not UTF-8 text (byte {exc.start})") from None


def run_import(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else _read_regular_file(args.file)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{args.file}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise UsageError(f"{args.file}: not a journal export")
    store = open_journal(args.journal)
    try:
        clusters = import_journal(store, doc)
        where = describe_store(store)
    finally:
        store.close()
    print(
        f"imported {len(clusters)} cluster(s) into {where}: {', '.join(clusters) or '-'}",
        file=sys.stderr,
    )
    return 0
