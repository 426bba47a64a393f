"""lvm and nfs pool backends without root: report parsing, argument lists, and the backends' decisions against a
fake lvm (the real thing is in tests/integration/test_pool_backends.py)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from virtfleet import hostcmd
from virtfleet.errors import Conflict, DriverError, InvalidSpec, NotFound, Unsupported
from virtfleet.model.storage import PoolSpec
from virtfleet.storage import lvm, nfs
from virtfleet.storage.backends import create_backend, default_mount_path
from virtfleet.storage.lvm import LvInfo, LvmBackend
from virtfleet.storage.nfs import Mount, NfsBackend

MiB = 1 << 20
EXTENT = 4 * MiB


def lvs_report(*rows: dict[str, str]) -> str:
    return json.dumps({"report": [{"lv": list(rows)}]})


def lv_row(name: str, attr: str, size: int, *, segtype: str = "thin", pool: str = "thin", percent: str = "0.00",
           vg: str = "vg0") -> dict[str, str]:
    return {"lv_name": name, "vg_name": vg, "lv_attr": attr, "lv_size": str(size), "data_percent": percent,
            "segtype": segtype, "pool_lv": pool, "vg_extent_size": str(EXTENT)}


POOL_ROW = lv_row("thin", "twi-aotz--", 400 * MiB, segtype="thin-pool", pool="", percent="12.50")


# --- lvm: pure helpers --------------------------------------------------------------------------------------------


def test_parse_lvs_reads_sizes_percentages_and_kinds() -> None:
    rows = lvm.parse_lvs(lvs_report(POOL_ROW, lv_row("vf-a", "Vwi-a-tz--", 8 * MiB),
                                    lv_row("root", "-wi-ao----", 1 << 30, segtype="linear", pool="", percent="")))
    pool, vol, root = rows
    assert (pool.name, pool.size, pool.data_percent, pool.is_thin_pool, pool.active) == (
        "thin", 400 * MiB, 12.5, True, True)
    assert (vol.name, vol.pool_lv, vol.is_thin_pool, vol.extent_size) == ("vf-a", "thin", False, EXTENT)
    assert root.data_percent is None and not root.is_thin_pool


def test_parse_lvs_tolerates_a_unit_suffix_and_an_empty_report() -> None:
    row = {**lv_row("vf-a", "Vwi---tz-k", 0), "lv_size": "8388608B"}
    (vol,) = lvm.parse_lvs(lvs_report(row))
    assert vol.size == 8 * MiB and not vol.active
    assert lvm.parse_lvs(lvs_report()) == []


def test_parse_lvs_garbage_is_a_driver_error() -> None:
    with pytest.raises(DriverError, match="cannot read the lvm report"):
        lvm.parse_lvs("  Volume group not found")


def test_parse_vgs() -> None:
    text = json.dumps({"report": [{"vg": [{"vg_name": "vg0"}, {"vg_name": "data"}]}]})
    assert lvm.parse_vgs(text) == ["vg0", "data"]


def test_thin_pool_usage_from_data_percent() -> None:
    (pool,) = lvm.parse_lvs(lvs_report(POOL_ROW))
    usage = lvm.thin_pool_usage(pool)
    assert (usage.capacity, usage.allocation, usage.available, usage.thin) == (400 * MiB, 50 * MiB, 350 * MiB, True)


def test_thin_pool_usage_of_an_inactive_pool_is_an_error() -> None:
    (pool,) = lvm.parse_lvs(lvs_report({**POOL_ROW, "lv_attr": "twi---tz--", "data_percent": ""}))
    with pytest.raises(DriverError, match="not active"):
        lvm.thin_pool_usage(pool)


def test_round_up_to_extents() -> None:
    assert lvm.round_up(1, EXTENT) == EXTENT
    assert lvm.round_up(EXTENT, EXTENT) == EXTENT
    assert lvm.round_up(EXTENT + 1, EXTENT) == 2 * EXTENT
    assert lvm.round_up(12345, 0) == 12345


def test_argument_lists() -> None:
    assert lvm.create_argv("vg0", "thin", "vf-a", 10 * MiB) == [
        "lvcreate", "-V", "10485760b", "-T", "vg0/thin", "-n", "vf-a", "-kn", "-ay", "-y"]
    assert lvm.snapshot_argv("vg0", "vf-base", "vf-clone") == [
        "lvcreate", "-s", "vg0/vf-base", "-n", "vf-clone", "-kn", "-y"]
    assert lvm.activate_argv("vg0", ["vf-a", "vf-b"]) == ["lvchange", "-ay", "-K", "vg0/vf-a", "vg0/vf-b"]
    assert lvm.resize_argv("vg0", "vf-a", 2 * MiB, shrink=False) == ["lvextend", "-L", "2097152b", "vg0/vf-a"]
    assert lvm.resize_argv("vg0", "vf-a", MiB, shrink=True) == ["lvreduce", "-f", "-L", "1048576b", "vg0/vf-a"]
    assert lvm.remove_argv("vg0", "vf-a") == ["lvremove", "-f", "vg0/vf-a"]
    assert lvm.lvs_argv("vg0")[:2] == ["lvs", "--reportformat"] and lvm.lvs_argv("vg0")[-1] == "vg0"
    assert "json" in lvm.vgs_argv()


def test_one_line_drops_noise_and_prefers_errors() -> None:
    stderr = ("File descriptor 10 (/dev/null) leaked on lvcreate invocation. Parent PID 1: bash\n"
              "  WARNING: Sum of all thin volume sizes exceeds the size of thin pool.\n"
              "  Logical Volume \"vf-a\" already exists in volume group \"vg0\"\n")
    assert lvm.one_line(stderr) == 'Logical Volume "vf-a" already exists in volume group "vg0"'
    assert lvm.one_line("  WARNING: only this\n") == "WARNING: only this"
    assert lvm.one_line("") == "no error message"


@pytest.mark.parametrize("source", [None, "vg0", "/thin", "vg0/"])
def test_split_source_rejects_bad_sources(source: str | None) -> None:
    with pytest.raises(InvalidSpec):
        lvm.split_source(source)


def test_missing_lvm_tools_name_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(hostcmd, "SBIN", ())
    with pytest.raises(DriverError, match="apt-get install lvm2"):
        lvm.run(["lvs"])


def test_run_reports_lvm_stderr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "lvs"
    fake.write_text("#!/bin/sh\necho '  Volume group \"nope\" not found' >&2\nexit 5\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DriverError) as caught:
        lvm.run(["lvs", "nope"])
    assert caught.value.cause == 'Volume group "nope" not found'


# --- lvm: the backend against a fake lvm --------------------------------------------------------------------------


class FakeLvm:
    """Enough of lvm's behaviour (one VG, thin LVs) to check which commands the backend runs and when."""

    def __init__(self, lvs: Sequence[dict[str, str]] = (POOL_ROW,), vgs: Sequence[str] = ("vg0",)) -> None:
        self.lvs = {row["lv_name"]: dict(row) for row in lvs}
        self.vgs = list(vgs)
        self.calls: list[list[str]] = []
        self.fail: str | None = None  # a command name that fails

    def run(self, argv: Sequence[str]) -> str:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == self.fail:
            raise DriverError(f"{argv[0]} failed", "simulated")
        if argv[0] == "vgs":
            return json.dumps({"report": [{"vg": [{"vg_name": vg} for vg in self.vgs]}]})
        if argv[0] == "lvs":
            return lvs_report(*self.lvs.values())
        if argv[0] == "lvcreate":
            name = argv[argv.index("-n") + 1]
            if "-s" in argv:
                origin = self.lvs[argv[argv.index("-s") + 1].split("/")[1]]
                self.lvs[name] = {**origin, "lv_name": name, "lv_attr": "Vwi---tz-k"}
            else:
                self.lvs[name] = lv_row(name, "Vwi-a-tz--", lvm.round_up(int(argv[2].rstrip("b")), EXTENT))
        elif argv[0] in ("lvextend", "lvreduce"):
            self.lvs[argv[-1].split("/")[1]]["lv_size"] = str(lvm.round_up(int(argv[-2].rstrip("b")), EXTENT))
        elif argv[0] == "lvremove":
            del self.lvs[argv[-1].split("/")[1]]
        elif argv[0] == "lvchange":
            for target in argv[3:] if "-K" in argv else argv[2:]:
                row = self.lvs[target.split("/")[1]]
                row["lv_attr"] = row["lv_attr"][:4] + "a" + row["lv_attr"][5:]
        return ""

    def commands(self) -> list[str]:
        return [call[0] for call in self.calls if call[0] not in ("lvs", "vgs")]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLvm:
    lvm_fake = FakeLvm()
    monkeypatch.setattr(lvm, "run", lvm_fake.run)
    monkeypatch.setattr(lvm, "wait_for_device", lambda path, timeout=0.0: None)
    return lvm_fake


def lvm_backend() -> LvmBackend:
    spec = PoolSpec(name="fast", type="lvm", source="vg0/thin")
    backend = create_backend(spec, default_mount_path(spec, Path("/var/lib/virtfleet")))
    assert isinstance(backend, LvmBackend)
    return backend


def test_registry_builds_the_lvm_backend() -> None:
    backend = lvm_backend()
    assert (backend.vg, backend.pool, backend.formats, backend.supports_backing_files) == (
        "vg0", "thin", ("raw",), False)
    assert backend.volume_path("disk1") == Path("/dev/vg0/vf-disk1")


def test_activate_names_a_missing_volume_group(fake: FakeLvm) -> None:
    fake.vgs = ["other"]
    with pytest.raises(InvalidSpec, match="volume group 'vg0' not found") as caught:
        lvm_backend().activate()
    assert caught.value.field == "source"


def test_activate_names_a_missing_thin_pool(fake: FakeLvm) -> None:
    fake.lvs = {}
    with pytest.raises(InvalidSpec, match="thin pool 'vg0/thin' not found"):
        lvm_backend().activate()


def test_activate_refuses_an_lv_that_is_not_a_thin_pool(fake: FakeLvm) -> None:
    fake.lvs = {"thin": lv_row("thin", "-wi-a-----", 8 * MiB, segtype="linear", pool="", percent="")}
    with pytest.raises(InvalidSpec, match="is a linear LV, not a thin pool"):
        lvm_backend().activate()


def test_activate_activates_only_our_inactive_volumes(fake: FakeLvm) -> None:
    fake.lvs.update({
        "vf-off": lv_row("vf-off", "Vwi---tz-k", 8 * MiB),
        "vf-on": lv_row("vf-on", "Vwi-a-tz--", 8 * MiB),
        "vf-other-pool": lv_row("vf-other-pool", "Vwi---tz--", 8 * MiB, pool="thin2"),
        "home": lv_row("home", "Vwi---tz--", 8 * MiB),
    })
    lvm_backend().activate()
    assert [c for c in fake.calls if c[0] == "lvchange"] == [["lvchange", "-ay", "-K", "vg0/vf-off"]]


def test_activate_activates_an_inactive_thin_pool(fake: FakeLvm) -> None:
    fake.lvs["thin"]["lv_attr"] = "twi---tz--"
    lvm_backend().activate()
    assert ["lvchange", "-ay", "vg0/thin"] in fake.calls


def test_usage(fake: FakeLvm) -> None:
    usage = lvm_backend().usage()
    assert (usage.capacity, usage.allocation, usage.available, usage.thin) == (400 * MiB, 50 * MiB, 350 * MiB, True)


def test_create_volume(fake: FakeLvm) -> None:
    path = lvm_backend().create_volume("disk1", "raw", 10 * MiB)
    assert path == Path("/dev/vg0/vf-disk1")
    assert lvm.create_argv("vg0", "thin", "vf-disk1", 10 * MiB) in fake.calls
    assert fake.commands() == ["lvcreate", "lvchange"]


def test_create_volume_refuses_an_existing_lv(fake: FakeLvm) -> None:
    fake.lvs["vf-disk1"] = lv_row("vf-disk1", "Vwi-a-tz--", 8 * MiB, pool="thin2")  # even in another thin pool
    with pytest.raises(Conflict, match="vg0/vf-disk1 already exists"):
        lvm_backend().create_volume("disk1", "raw", 10 * MiB)
    assert fake.commands() == []


def test_create_volume_with_a_backing_file_is_unsupported(fake: FakeLvm) -> None:
    with pytest.raises(Unsupported, match="thin snapshot"):
        lvm_backend().create_volume("clone", "raw", MiB, backing=Path("/dev/vg0/vf-base"), backing_format="raw")


def test_create_volume_refuses_qcow2(fake: FakeLvm) -> None:
    with pytest.raises(InvalidSpec, match="raw volumes only"):
        lvm_backend().create_volume("disk1", "qcow2", MiB)


def test_create_volume_removes_an_lv_that_cannot_be_activated(fake: FakeLvm) -> None:
    fake.fail = "lvchange"
    with pytest.raises(DriverError, match="simulated"):
        lvm_backend().create_volume("disk1", "raw", MiB)
    assert fake.commands() == ["lvcreate", "lvchange", "lvremove"]
    assert "vf-disk1" not in fake.lvs


def test_snapshot_volume(fake: FakeLvm) -> None:
    backend = lvm_backend()
    backend.create_volume("base", "raw", 8 * MiB)
    path = backend.snapshot_volume("clone", "base")
    assert path == Path("/dev/vg0/vf-clone")
    assert fake.calls[-2:] == [lvm.snapshot_argv("vg0", "vf-base", "vf-clone"),
                               ["lvchange", "-ay", "-K", "vg0/vf-clone"]]


def test_snapshot_of_an_unknown_volume(fake: FakeLvm) -> None:
    fake.lvs["vf-base"] = lv_row("vf-base", "Vwi-a-tz--", 8 * MiB, pool="thin2")  # not in our thin pool
    with pytest.raises(NotFound):
        lvm_backend().snapshot_volume("clone", "base")


def test_resize_grows_and_refuses_to_shrink_by_accident(fake: FakeLvm) -> None:
    backend = lvm_backend()
    backend.create_volume("disk1", "raw", 8 * MiB)
    backend.resize_volume("disk1", "raw", 16 * MiB)
    assert fake.calls[-1] == ["lvextend", "-L", f"{16 * MiB}b", "vg0/vf-disk1"]
    with pytest.raises(InvalidSpec, match="would shrink"):
        backend.resize_volume("disk1", "raw", 8 * MiB)
    backend.resize_volume("disk1", "raw", 8 * MiB, shrink=True)
    assert fake.calls[-1] == ["lvreduce", "-f", "-L", f"{8 * MiB}b", "vg0/vf-disk1"]


def test_resize_to_the_same_extent_count_runs_nothing(fake: FakeLvm) -> None:
    backend = lvm_backend()
    backend.create_volume("disk1", "raw", 8 * MiB)
    before = fake.commands()
    backend.resize_volume("disk1", "raw", 8 * MiB - 4096)  # rounds up to the size it has
    assert fake.commands() == before


def test_delete_volume_is_idempotent_and_touches_only_our_lvs(fake: FakeLvm) -> None:
    fake.lvs["vf-theirs"] = lv_row("vf-theirs", "Vwi-a-tz--", 8 * MiB, pool="thin2")
    backend = lvm_backend()
    backend.create_volume("disk1", "raw", MiB)
    backend.delete_volume("disk1")
    backend.delete_volume("disk1")
    backend.delete_volume("theirs")
    assert [c for c in fake.calls if c[0] == "lvremove"] == [["lvremove", "-f", "vg0/vf-disk1"]]
    assert "vf-theirs" in fake.lvs


def test_lv_info_active_flag() -> None:
    info = LvInfo("vf-a", "vg0", "Vwi-a-tz--", MiB, 0.0, "thin", "thin", EXTENT)
    assert info.active and not replace(info, attr="Vwi---tz-k").active and not replace(info, attr="").active


# --- nfs ----------------------------------------------------------------------------------------------------------

MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:45 / /mnt/with\\040space rw,relatime shared:20 - nfs4 10.0.0.1:/srv/a rw,vers=4.2
41 22 0:46 / /var/lib/virtfleet/mnt/shared rw,relatime - nfs4 127.0.0.1:/export/pool/ rw,vers=4.2,soft
42 41 0:47 / /var/lib/virtfleet/mnt/shared rw,relatime - tmpfs tmpfs rw
"""


def test_parse_mountinfo_unescapes_and_finds_the_top_mount() -> None:
    mounts = nfs.parse_mountinfo(MOUNTINFO)
    assert mounts[1] == Mount("/mnt/with space", "nfs4", "10.0.0.1:/srv/a")
    assert nfs.mounted_at(mounts, "/var/lib/virtfleet/mnt/shared") == Mount(
        "/var/lib/virtfleet/mnt/shared", "tmpfs", "tmpfs")  # the last mount hides the ones below
    assert nfs.mounted_at(mounts, "/nowhere") is None


def test_same_source_ignores_a_trailing_slash() -> None:
    assert nfs.same_source("127.0.0.1:/export/pool/", "127.0.0.1:/export/pool")
    assert nfs.same_source("[::1]:/x", "[::1]:/x/")
    assert not nfs.same_source("127.0.0.1:/export/pool", "127.0.0.1:/export/other")
    assert not nfs.same_source("host1:/x", "host2:/x")


def test_mount_arguments_and_hints() -> None:
    assert nfs.mount_args("h:/x", Path("/m")) == ["-t", "nfs", "-o", nfs.MOUNT_OPTIONS, "h:/x", "/m"]
    assert nfs.MOUNT_OPTIONS.startswith("vers=4,soft,timeo=50")
    assert "no NFS client" in nfs.mount_error_hint("mount.nfs: No such device\n")
    assert "nfs-common" in nfs.mount_error_hint("mount: /m: bad option; ... you might need a helper program.")
    assert nfs.mount_error_hint("mount.nfs: access denied by server\n") == "mount.nfs: access denied by server"


def nfs_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mountinfo: str) -> NfsBackend:
    info = tmp_path / "mountinfo"
    info.write_text(mountinfo)
    monkeypatch.setattr(nfs, "MOUNTINFO", info)
    spec = PoolSpec(name="shared", type="nfs", source="127.0.0.1:/export/pool", path=str(tmp_path / "mnt"))
    backend = create_backend(spec, default_mount_path(spec, tmp_path))
    assert isinstance(backend, NfsBackend)
    return backend


def fail_subprocess(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"no command expected: {args}")


def test_nfs_activate_is_a_no_op_when_the_export_is_mounted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = f"41 22 0:46 / {tmp_path}/mnt rw - nfs4 127.0.0.1:/export/pool/ rw\n"
    backend = nfs_backend(tmp_path, monkeypatch, line)
    monkeypatch.setattr(subprocess, "run", fail_subprocess)
    backend.activate()
    assert backend.supports_backing_files and backend.formats == ("qcow2", "raw")


def test_nfs_activate_refuses_a_mount_point_used_by_something_else(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    backend = nfs_backend(tmp_path, monkeypatch, f"41 22 0:46 / {tmp_path}/mnt rw - nfs4 otherhost:/x rw\n")
    with pytest.raises(Conflict, match="otherhost:/x"):
        backend.activate()


def test_nfs_volume_operations_need_the_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = nfs_backend(tmp_path, monkeypatch, "")
    for operation in (backend.usage, lambda: backend.create_volume("a", "qcow2", MiB),
                      lambda: backend.delete_volume("a"), lambda: backend.resize_volume("a", "qcow2", MiB)):
        with pytest.raises(DriverError, match="is not mounted"):
            operation()
    backend.deactivate()  # not mounted: nothing to undo


def test_nfs_missing_mount_helper_names_nfs_common(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = nfs_backend(tmp_path, monkeypatch, "")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(hostcmd, "SBIN", ())
    with pytest.raises(DriverError, match="apt-get install nfs-common"):
        backend.activate()


def test_nfs_mount_failure_carries_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mount.nfs").write_text("#!/bin/sh\nexit 32\n")
    (bin_dir / "mount").write_text("#!/bin/sh\necho \"mount.nfs: No such device\" >&2\nexit 32\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    backend = nfs_backend(tmp_path, monkeypatch, "")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(hostcmd, "SBIN", ())
    with pytest.raises(DriverError, match=re.escape("cannot mount 127.0.0.1:/export/pool")) as caught:
        backend.activate()
    assert caught.value.cause is not None and "no NFS client" in caught.value.cause
    assert (tmp_path / "mnt").is_dir()
