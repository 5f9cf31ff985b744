"""The page-blob upload against Azurite: only non-zero 4 MiB pages are sent, the blob's page
ranges and bytes equal the VHD's, a rerun sends nothing, an interrupted upload resumes by asking
the blob which pages it holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from azurite_testkit import Azurite
from blob_faults import BlobFaults, serve_blob_faults
from vhd_testkit import MIB, write_vhd

from provision.builders.vhd import DYNAMIC
from provision.clock import FakeClock
from provision.providers.azure.blob import (
    PAGE,
    blob_name,
    plan_pages,
    read_fixed_vhd,
    upload_vhd,
    written_ranges,
)
from provision.providers.azure.errors import AzurePublishError
from provision.retry import RetryPolicy

DIGEST = "sha256:" + "ab" * 32
DATA_AT = (0, 1, 9, 33, 34, 61)  # MiB offsets holding data: pages 0, 2, 8, 15 (and the footer's)


def test_a_vhd_that_azure_would_refuse_is_refused_before_any_upload(tmp_path: Path) -> None:
    dynamic = write_vhd(tmp_path / "d.vhd", 8, [0], disk_type=DYNAMIC)
    with pytest.raises(AzurePublishError, match="disk type 3"):
        read_fixed_vhd(dynamic)
    good = write_vhd(tmp_path / "g.vhd", 8, [0])
    broken = bytearray(good.read_bytes())
    broken[-512 + 70] ^= 0xFF  # the unique id: the checksum no longer matches
    (tmp_path / "b.vhd").write_bytes(bytes(broken))
    with pytest.raises(AzurePublishError, match="checksum"):
        read_fixed_vhd(tmp_path / "b.vhd")
    odd = tmp_path / "odd.vhd"
    odd.write_bytes(good.read_bytes()[: -512 - 4096] + good.read_bytes()[-512:])
    with pytest.raises(AzurePublishError, match="footer says"):
        read_fixed_vhd(odd)
    (tmp_path / "raw").write_bytes(b"\0" * 2 * MIB)  # a raw disk: no footer
    with pytest.raises(AzurePublishError, match="no VHD footer"):
        read_fixed_vhd(tmp_path / "raw")


def test_only_non_zero_pages_are_planned_and_holes_are_skipped(tmp_path: Path) -> None:
    vhd = read_fixed_vhd(write_vhd(tmp_path / "a.vhd", 64, DATA_AT))
    pages = plan_pages(vhd)
    last = (64 * MIB // PAGE) * PAGE  # the footer's page: 512 bytes past the disk
    assert pages == [(0, PAGE), (2 * PAGE, PAGE), (8 * PAGE, PAGE), (15 * PAGE, PAGE), (last, 512)]


def test_upload_sends_only_data_pages_and_the_blob_equals_the_vhd(
    azurite: Azurite, tmp_path: Path
) -> None:
    container = azurite.new_container("upload")
    vhd = read_fixed_vhd(write_vhd(tmp_path / "a.vhd", 64, DATA_AT))
    said: list[str] = []
    result = upload_vhd(container, vhd, DIGEST, workers=3, progress=said.append)
    assert not result.reused and result.pages == result.pages_sent == 5
    assert result.bytes_sent == 4 * PAGE + 512  # 16.5 MiB of a 64 MiB disk
    blob = container.get_blob_client(blob_name(DIGEST))
    assert blob.url == result.url and blob.url.endswith("/upload/provision-" + "ab" * 32 + ".vhd")
    ranges = written_ranges(blob)
    assert ranges == [
        (0, PAGE),
        (2 * PAGE, 3 * PAGE),
        (8 * PAGE, 9 * PAGE),
        (15 * PAGE, 16 * PAGE),
        (64 * MIB, 64 * MIB + 512),
    ]
    assert blob.download_blob().readall() == vhd.path.read_bytes()
    props = blob.get_blob_properties()
    assert props.metadata == {"provision_digest": "ab" * 32, "provision_state": "complete"}
    assert said and "(100%)" in said[-1] and "sent 16.0 MiB, zero 48.0 MiB" in said[-1]

    again = upload_vhd(container, vhd, DIGEST)
    assert again.reused and again.pages_sent == 0 and again.url == result.url


def test_an_interrupted_upload_resumes_with_the_pages_not_yet_written(
    azurite: Azurite, tmp_path: Path
) -> None:
    faults = BlobFaults(azurite.port, outage_after=10)  # the network goes away after ten pages
    server, port = serve_blob_faults(faults)
    try:
        azurite.new_container("resume")
        container = Azurite(port).service().get_container_client("resume")
        data = list(range(0, 128, 4))  # data in every 4 MiB page: 32 pages
        vhd = read_fixed_vhd(write_vhd(tmp_path / "a.vhd", 128, data))
        with pytest.raises(AzurePublishError, match="Put Page"):
            upload_vhd(
                container, vhd, DIGEST, workers=2, retry=RetryPolicy(attempts=2, clock=FakeClock())
            )
        blob = container.get_blob_client(blob_name(DIGEST))
        assert blob.get_blob_properties().metadata["provision_state"] == "partial"
        before = sum(end - start for start, end in written_ranges(blob))
        assert before == 10 * PAGE

        faults.outage_after = None  # back: the rerun sends only what is missing
        said: list[str] = []
        result = upload_vhd(container, vhd, DIGEST, workers=4, progress=said.append)
        assert not result.reused and result.pages_resumed == 10
        assert result.pages_sent == result.pages - 10 == 23
        assert result.bytes_sent == 32 * PAGE + 512 - before
        assert "already there 40.0 MiB" in said[-1]
        assert blob.download_blob().readall() == vhd.path.read_bytes()
        assert blob.get_blob_properties().metadata["provision_state"] == "complete"
    finally:
        server.shutdown()


def test_a_failed_page_is_retried_on_its_own_as_the_service_asks(
    azurite: Azurite, tmp_path: Path
) -> None:
    faults = BlobFaults(azurite.port)
    server, port = serve_blob_faults(faults)
    try:
        azurite.new_container("faults")
        container = Azurite(port).service().get_container_client("faults")
        vhd = read_fixed_vhd(write_vhd(tmp_path / "a.vhd", 64, DATA_AT))
        faults.fail_pages(503)
        faults.fail_pages(500, retry_after=3)
        clock = FakeClock()
        result = upload_vhd(
            container, vhd, DIGEST, workers=1, retry=RetryPolicy(attempts=4, clock=clock)
        )
        assert faults.failed == 2 and result.pages_sent == 5
        assert clock.now() - 1_700_000_000.0 >= 3  # the Retry-After was waited
        blob = container.get_blob_client(blob_name(DIGEST))
        assert blob.download_blob().readall() == vhd.path.read_bytes()

        other = "sha256:" + "cd" * 32
        faults.fail_pages(503, times=50)
        with pytest.raises(AzurePublishError) as caught:
            upload_vhd(
                container, vhd, other, workers=2, retry=RetryPolicy(attempts=3, clock=FakeClock())
            )
        assert "Put Page" in caught.value.message and "rerun" in (caught.value.hint or "")
        stuck = container.get_blob_client(blob_name(other))
        assert stuck.get_blob_properties().metadata["provision_state"] == "partial"
    finally:
        server.shutdown()
