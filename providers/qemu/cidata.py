"""The CIDATA metadata CD: an ISO 9660 image labelled ``cidata`` holding ``user-data`` and
``meta-data`` (NoCloud layout, read by cloud-init and by provision's ``metadata`` service)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from provision.fsutil import move_into_place
from provision.runner import require_tools, run

CIDATA_LABEL = "cidata"


def render_meta_data(instance_id: str, hostname: str) -> bytes:
    return f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n".encode()


def write_cidata_iso(dest: Path, user_data: bytes, *, instance_id: str, hostname: str) -> Path:
    """Write the CIDATA ISO to ``dest`` (through a temporary name) with xorriso."""
    require_tools(["xorriso"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cidata-", dir=dest.parent) as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        (tree / "user-data").write_bytes(user_data)
        (tree / "meta-data").write_bytes(render_meta_data(instance_id, hostname))
        partial = Path(tmp) / "cidata.iso"
        run(
            ["xorriso", "-as", "mkisofs", "-quiet", "-V", CIDATA_LABEL, "-J", "-r",
             "-o", partial, tree]
        )  # fmt: skip
        move_into_place(partial, dest)
    return dest
