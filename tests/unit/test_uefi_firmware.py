"""UEFI firmware is found through QEMU's firmware descriptors, as QEMU's tools and libvirt find it."""

from __future__ import annotations

import json
from pathlib import Path

from virtfleet.drivers.qemu.firmware import find_uefi


def _descriptor(directory: Path, name: str, tmp: Path, *, features: list[str] | None = None,
                machines: tuple[str, ...] = ("pc-q35-*",), interface: str = "uefi", template: bool = True) -> Path:
    code, store = tmp / f"{name}-CODE.fd", tmp / f"{name}-VARS.fd"
    code.write_bytes(b"code")
    store.write_bytes(b"vars")
    mapping: dict[str, object] = {"device": "flash", "executable": {"filename": str(code), "format": "raw"}}
    if template:
        mapping["nvram-template"] = {"filename": str(store), "format": "raw"}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({
        "interface-types": [interface], "mapping": mapping, "features": features or [],
        "targets": [{"architecture": "x86_64", "machines": list(machines)}],
    }))
    return code


def test_the_lowest_named_plain_uefi_descriptor_wins(tmp_path: Path) -> None:
    share = tmp_path / "share"
    _descriptor(share, "40-secure", tmp_path, features=["secure-boot", "requires-smm", "enrolled-keys"])
    _descriptor(share, "50-bios", tmp_path, interface="bios")
    _descriptor(share, "55-i440fx", tmp_path, machines=("pc-i440fx-*",))
    _descriptor(share, "58-stateless", tmp_path, template=False)
    plain = _descriptor(share, "60-plain", tmp_path)
    _descriptor(share, "70-later", tmp_path)
    found = find_uefi((tmp_path / "etc", share))
    assert found is not None and found.code == plain and found.descriptor == share / "60-plain.json"


def test_etc_overrides_a_descriptor_of_the_same_name_and_broken_ones_are_skipped(tmp_path: Path) -> None:
    share, etc = tmp_path / "share", tmp_path / "etc"
    (tmp_path / "pkg").mkdir()
    _descriptor(share, "60-plain", tmp_path / "pkg")
    local = _descriptor(etc, "60-plain", tmp_path)
    (etc / "10-broken.json").write_text("{not json")
    found = find_uefi((etc, share))
    assert found is not None and found.code == local


def test_no_firmware_installed_is_none(tmp_path: Path) -> None:
    assert find_uefi((tmp_path / "missing",)) is None
    share = tmp_path / "share"
    code = _descriptor(share, "60-plain", tmp_path)
    code.unlink()  # a descriptor naming a file that is not there is no firmware
    assert find_uefi((share,)) is None
