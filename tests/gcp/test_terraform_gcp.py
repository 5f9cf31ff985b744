"""terraform/gcp, checked without a Terraform binary: every file parses (python-hcl2), checkov
finds no failed check, the bucket is private with a lifecycle for tarballs, and every API call
the code makes (recorded on the wire: the GCE fake, and a recording proxy in front of the GCS
emulator) needs only permissions the module's roles grant, the push's to the push roles and the
daemon's to the daemon role; the daemon role grants nothing the provider does not need."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from gcp.gce_fake import FakeGce
from gcp.gcp_testkit import BUCKET, PROJECT, ZONE, Gcs, clients_for, write_artifact
from terraform_testkit import (
    TERRAFORM,
    assert_checkov_passes,
    one,
    resource,
    resources,
    ungranted,
    unused,
)

from provision.clock import SystemClock
from provision.providers import get_target
from provision.providers.gcp.publish import GcpPush, publish_gcp
from provision.reconcile.provider import TAG_CLUSTER, TAG_GROUP, CreateRequest, list_all
from provision.reconcile.spec import ProviderSpec

MODULE = TERRAFORM / "gcp"
# What each call needs (Compute Engine's and Cloud Storage's IAM permission reference).
NEEDS: dict[str, set[str]] = {
    "images.list": {"compute.images.list"},
    "images.get": {"compute.images.get"},
    "images.insert": {"compute.images.create"},
    "images.deprecate": {"compute.images.deprecate"},
    "globalOperations.wait": {"compute.globalOperations.get"},
    "globalOperations.get": {"compute.globalOperations.get"},
    "zoneOperations.wait": {"compute.zoneOperations.get"},
    "zoneOperations.get": {"compute.zoneOperations.get"},
    # an insert creates the boot disk from the image, sets labels, metadata and network tags at
    # birth, and attaches the subnetwork
    "instances.insert": {
        "compute.instances.create",
        "compute.disks.create",
        "compute.images.useReadOnly",
        "compute.instances.setLabels",
        "compute.instances.setMetadata",
        "compute.instances.setTags",
        "compute.subnetworks.use",
    },
    "instances.list": {"compute.instances.list"},
    "instances.get": {"compute.instances.get"},
    "instances.delete": {"compute.instances.delete"},
    "objects.get": {"storage.objects.get"},
    "objects.insert": {"storage.objects.create"},
}


def role_permissions(name: str) -> set[str]:
    return {
        str(p) for p in one(resource(MODULE, "google_project_iam_custom_role", name)["permissions"])
    }


def test_the_module_parses_and_the_bucket_is_private_with_a_tarball_lifecycle() -> None:
    bucket = resource(MODULE, "google_storage_bucket", "images")
    assert one(bucket["uniform_bucket_level_access"]) is True
    assert one(bucket["public_access_prevention"]) == "enforced"
    rules = [one(r) for r in bucket["lifecycle_rule"]]
    assert any(
        one(one(r["condition"])["matches_prefix"]) == "provision/"
        and one(one(r["action"])["type"]) == "Delete"
        for r in rules
    )
    members = [k for k in resources(MODULE) if k[0].endswith("_iam_member")]
    assert sorted(members) == [
        ("google_project_iam_member", "daemon"),
        ("google_project_iam_member", "push"),
        ("google_storage_bucket_iam_member", "push_objects"),
    ]


def test_checkov_finds_no_failed_check() -> None:
    report = assert_checkov_passes(MODULE, "GCP", passed_at_least=10)
    assert report["summary"]["skipped"] == 0


class Recorder:
    """A proxy in front of the GCS emulator recording each JSON API call as ``objects.get`` /
    ``objects.insert`` / ``buckets.*``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _forward(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if "/upload/storage/v1/b/" in path:
                    recorder.calls.append("objects.insert")
                elif "/o/" in path or path.endswith("/o"):
                    recorder.calls.append(
                        "objects.get" if self.command == "GET" else f"objects.{self.command}"
                    )
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length")
                }
                answer = requests.request(
                    self.command,
                    recorder.upstream + self.path,
                    data=body,
                    headers=headers,
                    timeout=30,
                )
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def recorded(gcs: Gcs, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    proxy = Recorder(gcs.url)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    try:
        yield proxy
    finally:
        proxy.server.shutdown()


def test_every_call_is_granted_and_the_daemon_gets_no_more(
    tmp_path: Path, gcs: Gcs, gce: FakeGce, recorded: Recorder
) -> None:
    from gcp.gcp_testkit import Gcs as _Gcs

    storage = _Gcs(recorded.url).client()
    push = GcpPush(PROJECT, BUCKET, family="web", deprecate_previous=True, sessions=tmp_path / "s")
    publish_gcp(write_artifact(tmp_path / "a"), push, clients_for(gce), storage)
    made = publish_gcp(write_artifact(tmp_path / "b"), push, clients_for(gce), storage)
    push_calls = set(gce.calls) | set(recorded.calls)
    gce.calls.clear()

    options = {
        "project": PROJECT,
        "zone": ZONE,
        "endpoint": gce.url,
        "anonymous": True,
        "pageSize": 2,
    }
    target = get_target("gcp")
    provider = target.create_provider(
        ProviderSpec("gce", "gcp", options=options, base=tmp_path), SystemClock()
    )
    tags = {
        TAG_CLUSTER: "shop",
        TAG_GROUP: "web",
        "provision-slot": "00001",
        "provision-epoch": "1",
    }
    props = {"machineType": "e2-small", "networkTags": ["web"], "metadata": {"user-data": "x"}}
    machines = [
        provider.create_instance(
            CreateRequest(
                f"shop/web/{n:05d}/1",
                f"shop-web-{n:05d}",
                made.image,
                props,
                {**tags, "provision-slot": f"{n:05d}"},
                1,
            )
        )
        for n in range(1, 4)
    ]
    list_all(provider, {TAG_CLUSTER: "shop"})
    provider.address(machines[0], 7080)
    target.find_image(provider, "sha256:" + "1" * 64)
    for machine in machines:
        provider.destroy_instance(machine.id, 1)
    daemon_calls = set(gce.calls)

    assert {
        "images.insert",
        "images.deprecate",
        "globalOperations.wait",
        "objects.insert",
        "objects.get",
    } <= push_calls
    assert {
        "instances.insert",
        "instances.list",
        "instances.get",
        "instances.delete",
        "zoneOperations.wait",
    } <= daemon_calls
    unknown = (push_calls | daemon_calls) - set(NEEDS)
    assert not unknown, f"calls with no known permission: {unknown}"
    push_granted = role_permissions("push") | role_permissions("push_objects")
    for call in sorted(push_calls):
        assert ungranted(push_granted, NEEDS[call]) == set(), call
    daemon_granted = role_permissions("daemon")
    needed = set().union(*(NEEDS[c] for c in daemon_calls))
    assert ungranted(daemon_granted, needed) == set()
    assert unused(daemon_granted, needed) == [], "granted but never needed"
    assert not any(
        p.endswith(".delete") and p.startswith("compute.images") for p in push_granted
    )  # never deletes
