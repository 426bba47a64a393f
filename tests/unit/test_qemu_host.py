"""Host-side pieces of the QEMU driver: KVM detection, accel choice, run-directory records, the console ring."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtfleet.drivers.qemu.accel import KvmProbe, choose_accel, probe_kvm
from virtfleet.drivers.qemu.runtime import is_our_qemu, read_record, read_tail, trim_log, write_record
from virtfleet.errors import InvalidSpec


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu {flags} sse2\n\nprocessor\t: 1\nflags\t\t: fpu {flags}\n")
    return path


def test_no_vmx_or_svm_means_no_kvm_even_with_a_device(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    probe = probe_kvm(cpuinfo(tmp_path, "hypervisor"), device)
    assert not probe.usable and "no vmx/svm" in probe.reason


def test_vmx_without_a_device_is_not_usable(tmp_path: Path) -> None:
    probe = probe_kvm(cpuinfo(tmp_path, "vmx"), tmp_path / "missing")
    assert not probe.usable and "does not exist" in probe.reason


def test_vmx_with_an_openable_device_is_usable(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    probe = probe_kvm(cpuinfo(tmp_path, "svm"), device)
    assert probe.usable and "svm" in probe.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any file")
def test_unwritable_device_is_not_usable(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    device.chmod(0o400)
    assert "cannot open" in probe_kvm(cpuinfo(tmp_path, "vmx"), device).reason


def test_accel_choice() -> None:
    usable, unusable = KvmProbe(True, "ok"), KvmProbe(False, "no vmx")
    assert choose_accel("auto", usable) == ("kvm", "")
    assert choose_accel("tcg", usable) == ("tcg", "")
    accel, warning = choose_accel("auto", unusable)
    assert accel == "tcg" and "KVM is not usable (no vmx)" in warning and "TCG" in warning
    with pytest.raises(InvalidSpec) as refused:
        choose_accel("kvm", unusable)
    assert refused.value.field == "accel"


def test_records_are_versioned_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    write_record(path, {"pid": 42})
    assert read_record(path) == {"format": 1, "pid": 42}
    path.write_text('{"format": 99, "pid": 1}')
    assert read_record(path) is None  # a record from an unknown future format is not trusted
    path.write_text("{half")
    assert read_record(path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["runtime.json"]


def test_pid_reuse_is_not_mistaken_for_our_qemu() -> None:
    # This process is alive but is not a QEMU carrying the VM's uuid.
    assert not is_our_qemu(os.getpid(), "0b5e8a9e-6f4a-4c1e-9d0e-3f1f2a7c9b11")
    assert not is_our_qemu(2**22 + 7, "x")  # no such pid


def test_console_log_is_trimmed_like_a_ring(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"".join(b"line %05d\n" % i for i in range(1000)))  # 11000 bytes
    assert not trim_log(log, max_bytes=20000, keep_bytes=5000)
    assert trim_log(log, max_bytes=10000, keep_bytes=5000)
    kept = log.read_bytes()
    assert len(kept) <= 5000 and kept.startswith(b"line ") and kept.endswith(b"line 00999\n")
    assert read_tail(log, 11) == b"line 00999\n"
    assert read_tail(tmp_path / "missing", 10) == b""
