"""--accel auto: a bounded probe decides, never a hang, and the verdict is cached."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from provision.errors import UsageError
from provision.providers.qemu.accel import (
    build_probe_firmware,
    probe_accel_boot,
    probe_kvm,
    resolve_accel,
)


def cpu_has_virtualisation() -> bool:
    flags = Path("/proc/cpuinfo").read_text().split()
    return "vmx" in flags or "svm" in flags


def test_probe_firmware_reaches_long_mode_under_tcg() -> None:
    # The probe guest itself is right: under software emulation it exits with its code.
    firmware = build_probe_firmware()
    assert len(firmware) == 0x10000
    assert probe_accel_boot("tcg", timeout=20) is True


def test_auto_is_bounded_and_cached(tmp_path: Path) -> None:
    started = time.monotonic()
    verdict = resolve_accel("auto", cache_dir=tmp_path, timeout=5)
    first = time.monotonic() - started
    assert first < 15, f"auto took {first:.1f}s"
    if not cpu_has_virtualisation():
        # e.g. this test rig: /dev/kvm exists but guests hang under it.
        assert verdict == "tcg"
    cache = json.loads((tmp_path / "accel.json").read_text())
    assert cache["kvm_works"] is (verdict == "kvm")
    started = time.monotonic()
    assert resolve_accel("auto", cache_dir=tmp_path) == verdict
    assert time.monotonic() - started < 1  # answered from the cache


def test_missing_kvm_device_means_no_kvm(tmp_path: Path) -> None:
    verdict = probe_kvm(device=str(tmp_path / "kvm"))
    assert verdict.kvm_works is False
    assert "does not exist" in verdict.reason


def test_explicit_choices_and_unknown() -> None:
    assert resolve_accel("tcg") == "tcg"
    assert resolve_accel("kvm") == "kvm"
    with pytest.raises(UsageError):
        resolve_accel("hvf")
