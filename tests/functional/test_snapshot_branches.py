"""Deleting a disk snapshot never merges into an image another branch may still be based on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.functional.conftest import Api
from tests.functional.storage_helpers import create_volume, pool_dir, refused, succeeded
from virtfleet.storage import qemu_img
from virtfleet.storage.qemu_img import ImageInfo, QemuImgError


def _snapshot(api: Api, vm: str, name: str) -> None:
    succeeded(api, api.client.post(f"/api/v1/vms/{vm}/snapshots", json={"name": name}))


def test_an_image_that_cannot_be_read_stops_the_merge(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    create_volume(api, "data", "8M")
    api.create("vm1", disks=[{"volume": "data"}])
    _snapshot(api, "vm1", "s1")
    s2_base = api.vm("vm1")["spec"]["disks"][0]["path"]  # what s2 freezes: an overlay on `data`, s1's image
    _snapshot(api, "vm1", "s2")
    succeeded(api, api.client.post("/api/v1/vms/vm1/snapshots/s1/revert"))  # a new branch, also on `data`
    before = {p.name: p.read_bytes() for p in pool_dir(api).iterdir() if p.is_file()}

    real_info = qemu_img.info

    def info(path: Path, fmt: str) -> ImageInfo:
        if str(path) == s2_base:  # e.g. qemu-img timing out under load
            raise QemuImgError("qemu-img info failed", "timed out")
        return real_info(path, fmt)

    monkeypatch.setattr(qemu_img, "info", info)
    response = api.client.delete("/api/v1/vms/vm1/snapshots/s1")
    refused(response, 409, says=f"cannot tell whether {s2_base} is based on")
    assert {p.name: p.read_bytes() for p in pool_dir(api).iterdir() if p.is_file()} == before
    monkeypatch.undo()
    refused(api.client.delete("/api/v1/vms/vm1/snapshots/s1"), 409, says="is the base of another branch")
