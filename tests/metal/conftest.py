"""Fixtures shared by the bare-metal tests: the lab networks (network namespaces) that firmware
PXE-boots in, with `provision serve` alone or beside dnsmasq as the DHCP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_testkit import LabNetwork, lab_network


@pytest.fixture
def single_network(tmp_path: Path) -> Iterator[LabNetwork]:
    """A lab network where `provision serve` is the only DHCP server."""
    yield from lab_network(tmp_path, with_dhcp_server=False)


@pytest.fixture
def network_with_dnsmasq(tmp_path: Path) -> Iterator[LabNetwork]:
    """A lab network where dnsmasq is the DHCP server and serve answers beside it."""
    yield from lab_network(tmp_path, with_dhcp_server=True)
