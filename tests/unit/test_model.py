"""The VM spec, sizes and the state machine."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from virtfleet.errors import InvalidState
from virtfleet.jobs.vm_create import disk_spec
from virtfleet.model.units import format_mib, parse_size_bytes, parse_size_mib
from virtfleet.model.vm import ALLOWED, VmCreate, VmOperation, VmSpec, VmState, require


@pytest.mark.parametrize(
    ("text", "mib"),
    [("256M", 256), ("256", 256), (256, 256), ("1G", 1024), ("2GiB", 2048), ("512MB", 512), ("1t", 1048576)],
)
def test_sizes(text: str | int, mib: int) -> None:
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize("text", ["", "lots", "1.5G", "-1M", "12X"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size_bytes(text)


def test_size_not_whole_mib() -> None:
    with pytest.raises(ValueError, match="whole number of MiB"):
        parse_size_mib("1536K")
    assert format_mib(2048) == "2G" and format_mib(300) == "300M"


def test_spec_defaults_and_round_trip() -> None:
    spec = VmSpec(name="a", memory="1G")
    assert (spec.cpus, spec.memory, spec.machine, spec.accel, spec.image) == (1, 1024, "microvm", "auto", "tiny")
    assert VmSpec.model_validate_json(spec.model_dump_json()) == spec


def test_display_defaults_to_none_and_vnc_needs_q35() -> None:
    assert VmSpec(name="a").display == "none"
    assert VmSpec(name="a", machine="q35", display="vnc").display == "vnc"
    with pytest.raises(ValidationError) as caught:
        VmSpec(name="a", display="vnc")  # microvm is the default machine
    error = caught.value.errors()[0]
    assert error["loc"] == ("display",) and "q35" in error["msg"]
    with pytest.raises(ValidationError) as caught:
        VmSpec.model_validate({"name": "a", "machine": "q35", "display": "spice"})
    assert caught.value.errors()[0]["loc"] == ("display",)


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [({"name": "a/b"}, "name"), ({"name": "-a"}, "name"), ({"name": "x" * 64}, "name"),
     ({"name": "a", "memory": 0}, "memory"), ({"name": "a", "cpus": 0}, "cpus"),
     ({"name": "a", "cpus": 10000}, "cpus"), ({"name": "a", "unknown": 1}, "unknown"),
     ({"name": "a", "memory": True}, "memory")],
)
def test_spec_refuses(fields: dict[str, object], bad_field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        VmSpec.model_validate(fields)
    assert caught.value.errors()[0]["loc"][0] == bad_field


def test_every_operation_has_allowed_states() -> None:
    assert set(ALLOWED) == set(VmOperation)
    require(VmOperation.START, VmState.CRASHED, "vm 'a'")
    with pytest.raises(InvalidState) as caught:
        require(VmOperation.START, VmState.RUNNING, "vm 'a'")
    assert caught.value.current == "running"
    assert caught.value.allowed == ["crashed", "stopped"]
    assert str(caught.value) == "cannot start vm 'a': it is running (allowed when crashed or stopped)"


def test_delete_only_when_down() -> None:
    for state in VmState:
        allowed = state in (VmState.STOPPED, VmState.CRASHED)
        assert (state in ALLOWED[VmOperation.DELETE]) is allowed


def test_volume_sizes_are_bytes_unless_a_unit_says_otherwise() -> None:
    from virtfleet.model.storage import VolumeSpec

    assert VolumeSpec(name="v", size=1048576).size == 1 << 20
    assert VolumeSpec(name="v", size="10G").size == 10 << 30
    assert VolumeSpec(name="v", size="2048K").size == 2 << 20
    for bad in (0, "0", "10X", -1, 1 << 60):
        with pytest.raises(ValidationError):
            VolumeSpec(name="v", size=bad)


def test_a_create_request_may_ask_for_new_volumes_a_recorded_spec_never_holds() -> None:
    request = VmCreate.model_validate({"name": "a", "machine": "q35", "image": None, "disks": [
        {"new": {"clone_of": "golden"}, "boot_index": 0}, {"volume": "data"},
        {"new": {"size": "1G"}, "cache": "none"}]})
    assert [(index, new.size, new.clone_of) for index, new in request.new_disks()] == [(0, None, "golden"),
                                                                                          (2, 1 << 30, None)]
    recorded = disk_spec(request.disks[2], "default/a-disk2")
    assert (recorded.volume, recorded.cache, recorded.path) == ("default/a-disk2", "none", None)
    assert "new" not in recorded.model_dump()
    with pytest.raises(ValidationError) as caught:
        VmSpec.model_validate({"name": "a", "disks": [{"new": {"size": "1G"}}]})
    assert caught.value.errors()[0]["loc"] == ("disks", 0, "new")


@pytest.mark.parametrize(("disk", "loc", "words"), [
    ({"new": {"size": "1G"}, "volume": "x"}, ("disks", 0), "only one"),
    ({"new": {"size": "1G"}, "format": "raw"}, ("disks", 0), "inside new"),
    ({"new": {}}, ("disks", 0, "new"), "give a size"),
    ({"new": {"size": "1G", "clone_of": "t"}}, ("disks", 0, "new"), "not both"),
    ({"new": {"clone_of": "t", "format": "raw"}}, ("disks", 0, "new"), "keeps the format"),
    ({"new": {"size": "1G", "name": "a/b"}}, ("disks", 0, "new", "name"), "pattern"),
    ({}, ("disks", 0), "a volume"),
])
def test_new_disk_requests_refuse(disk: dict[str, object], loc: tuple[object, ...], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        VmCreate.model_validate({"name": "a", "disks": [disk]})
    assert caught.value.errors()[0]["loc"] == loc and words in caught.value.errors()[0]["msg"]
