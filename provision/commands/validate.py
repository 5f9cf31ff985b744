"""``provision validate FILE... [--json]``: check image spec files without building.

Exit 0 when the (merged) spec is valid, 2 when it has problems: each printed on its own line
as ``file:line:column: key: message``. ``--json`` prints ``{"valid": ..., "problems": [...],
"spec": ...}`` instead (the merged spec in LinuxKit's shape when valid). Never touches the
network.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from provision.errors import SpecError
from provision.spec.image import spec_to_dict
from provision.spec.load import load_spec


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check image spec files (all problems at once, with file:line:column)",
        description="Parse, check and merge LinuxKit-style image spec files. Later files "
        "extend earlier ones (see docs/spec-merge.md).",
    )
    parser.add_argument("specs", nargs="+", metavar="FILE", help="spec files, merged in order")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.set_defaults(func=validate)


def validate(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.specs)
    except SpecError as exc:
        if not args.json:
            raise
        report: dict[str, Any] = {"valid": False, "problems": [asdict(p) for p in exc.problems]}
        print(json.dumps(report, indent=2, sort_keys=True))
        return exc.exit_code
    if args.json:
        print(
            json.dumps(
                {"valid": True, "problems": [], "spec": spec_to_dict(spec)},
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    counts = ", ".join(
        f"{len(getattr(spec, s))} {s}"
        for s in ("init", "onboot", "onshutdown", "services", "files", "volumes")
    )
    print(f"ok: {' + '.join(args.specs)}: {counts}", file=sys.stdout)
    return 0
