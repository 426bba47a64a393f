"""The one place that decides, from the driver's capabilities and the VM's spec, whether an operation can run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from virtfleet.api.errors import error_body, status_for
from virtfleet.drivers.base import DriverConfig
from virtfleet.drivers.fake import CAPABILITIES_OPTION, FakeDriver
from virtfleet.errors import Unsupported
from virtfleet.jobs.capability_check import check_spec, require
from virtfleet.model.vm import DiskSpec, VmSpec


def driver(tmp_path: Path, **lacking: Any) -> FakeDriver:
    extra = {CAPABILITIES_OPTION: json.dumps(lacking)} if lacking else {}
    return FakeDriver(DriverConfig(tmp_path, extra=extra))


def refused(call: Any) -> Unsupported:
    with pytest.raises(Unsupported) as raised:
        call()
    return raised.value


def test_a_capability_the_driver_lacks_is_named(tmp_path: Path) -> None:
    error = refused(lambda: require(driver(tmp_path, pause=False), "pause", what="pause vm 'a'"))
    assert error.capability == "pause" and "cannot pause vm 'a'" in error.message and "fake" in error.message
    assert status_for(error) == 501
    assert error_body(error.code, error.message, **error.details())["error"]["capability"] == "pause"
    require(driver(tmp_path), "pause", what="pause vm 'a'")  # the full fake can


def test_hot_plug_depends_on_the_machine_and_the_bus(tmp_path: Path) -> None:
    full = driver(tmp_path)
    micro, q35 = VmSpec(name="m"), VmSpec(name="q", machine="q35")
    assert refused(lambda: require(full, "disk_hotplug", what="x", spec=micro)).capability == "disk_hotplug"
    assert "no hot-plug bus" in refused(lambda: require(full, "nic_hotplug", what="x", spec=micro)).message
    scsi = DiskSpec(path="/p", bus="virtio-scsi")
    assert "only virtio-blk" in refused(lambda: require(full, "disk_hotplug", what="x", spec=q35, disk=scsi)).message
    require(full, "disk_hotplug", what="x", spec=q35, disk=DiskSpec(path="/p"))
    require(full, "nic_hotplug", what="x", spec=q35)


@pytest.mark.parametrize(("lacking", "spec", "capability"), [
    ({"machines": ["q35"]}, {}, "machines"),
    ({"kernel_boot": False}, {"machine": "q35"}, "kernel_boot"),
    ({"cloud_init": False}, {"cloud_init": {}}, "cloud_init"),
    ({"vnc": False}, {"machine": "q35", "display": "vnc"}, "vnc"),
    ({"link_state": False}, {"nics": [{"network": "n", "link_up": False}]}, "link_state"),
])
def test_what_a_spec_needs(tmp_path: Path, lacking: dict[str, Any], spec: dict[str, Any], capability: str) -> None:
    vm = VmSpec.model_validate({"name": "a", **spec})
    check_spec(driver(tmp_path), vm, what="run it")  # the full fake runs it
    error = refused(lambda: check_spec(driver(tmp_path, **lacking), vm, what="run it"))
    assert error.capability == capability and error.message.startswith("cannot run it")


def test_a_disk_booting_q35_needs_no_kernel_boot(tmp_path: Path) -> None:
    spec = VmSpec(name="a", machine="q35", image=None, disks=[DiskSpec(path="/p")])
    check_spec(driver(tmp_path, kernel_boot=False, cloud_init=False, vnc=False, machines=["q35"]), spec, what="x")


def test_unsupported_without_a_capability_has_no_such_field() -> None:
    assert Unsupported("lvm pools make only linked clones").details() == {}
