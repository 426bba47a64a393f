"""LVM thin pools: every volume is a thin logical volume in a volume group and thin pool the user made.

We never create or remove volume groups, physical volumes or the thin pool. Every LV we make is named "vf-<volume>",
and we only ever change LVs with that prefix that sit in our thin pool, so a VG shared with other users is safe.
Linked clones are thin snapshots (instant, no backing chain), so the pool holds raw volumes only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtfleet.errors import Conflict, DriverError, InvalidSpec, NotFound, Unsupported
from virtfleet.hostcmd import SBIN, find_tool, run_tool
from virtfleet.model.storage import PoolSpec, PoolUsage, VolumeFormat

LV_PREFIX = "vf-"
APT_HINT = "install it with: apt-get install lvm2"
LVS_FIELDS = "lv_name,vg_name,lv_attr,lv_size,data_percent,segtype,pool_lv,vg_extent_size"
COMMAND_TIMEOUT = 120.0  # lvm waits on its locks; a stuck command must not hold a worker thread forever
DEVICE_TIMEOUT = 10.0  # how long /dev/VG/LV may take to appear after activation (udev)
# lvm tools live in /usr/sbin, which a non-login PATH may lack.


@dataclass(frozen=True)
class LvInfo:
    """One row of `lvs`: sizes in bytes, data_percent None when lvm does not know it (inactive thin pool)."""

    name: str
    vg: str
    attr: str
    size: int
    data_percent: float | None
    segtype: str
    pool_lv: str
    extent_size: int

    @property
    def is_thin_pool(self) -> bool:
        return self.segtype == "thin-pool"

    @property
    def active(self) -> bool:
        return len(self.attr) > 4 and self.attr[4] == "a"  # 5th attr character is the activation state


# --- pure helpers (unit-tested without root) ----------------------------------------------------------------------


def split_source(source: str | None) -> tuple[str, str]:
    """"VG/THINPOOL" -> (vg, thin_pool); the model already checked the shape."""
    vg, sep, pool = (source or "").partition("/")
    if not sep or not vg or not pool:
        raise InvalidSpec("source", f"an lvm pool needs VOLUME_GROUP/THIN_POOL, not {source!r}")
    return vg, pool


def lv_name(volume: str) -> str:
    return f"{LV_PREFIX}{volume}"


def _bytes(value: str) -> int:
    # --units b --nosuffix gives plain digits; tolerate a "B" suffix from configs that force one.
    return int(value.strip().rstrip("Bb") or 0)


def _percent(value: str) -> float | None:
    value = value.strip()
    return float(value) if value else None


def _report_rows(text: str, key: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
        rows: list[dict[str, Any]] = [row for report in data["report"] for row in report.get(key, ())]
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError("cannot read the lvm report", f"{exc}: {text[:200]!r}") from exc
    return rows


def parse_lvs(text: str) -> list[LvInfo]:
    """`lvs --reportformat json --units b --nosuffix -o LVS_FIELDS` -> rows."""
    return [
        LvInfo(
            name=row["lv_name"], vg=row["vg_name"], attr=row.get("lv_attr", ""), size=_bytes(row["lv_size"]),
            data_percent=_percent(row.get("data_percent", "")), segtype=row.get("segtype", ""),
            pool_lv=row.get("pool_lv", ""), extent_size=_bytes(row.get("vg_extent_size", "0")),
        )
        for row in _report_rows(text, "lv")
    ]


def parse_vgs(text: str) -> list[str]:
    """`vgs --reportformat json -o vg_name` -> volume group names."""
    return [str(row["vg_name"]) for row in _report_rows(text, "vg")]


def thin_pool_usage(pool: LvInfo) -> PoolUsage:
    if pool.data_percent is None:
        raise DriverError(f"thin pool {pool.vg}/{pool.name} is not active", "lvm reports no data usage for it")
    allocation = min(pool.size, round(pool.size * pool.data_percent / 100))
    return PoolUsage(capacity=pool.size, allocation=allocation, available=pool.size - allocation, thin=True)


def round_up(size: int, extent: int) -> int:
    """lvm sizes LVs in whole extents: what a request for `size` bytes really gets."""
    return size if extent <= 0 else math.ceil(size / extent) * extent


def lvs_argv(target: str) -> list[str]:
    return ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", LVS_FIELDS, target]


def vgs_argv() -> list[str]:
    return ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_name"]


def create_argv(vg: str, pool: str, lv: str, size: int) -> list[str]:
    # -kn: no activation-skip flag, so the LV comes back with the VG after a reboot; -y: answer wipe prompts.
    return ["lvcreate", "-V", f"{size}b", "-T", f"{vg}/{pool}", "-n", lv, "-kn", "-ay", "-y"]


def snapshot_argv(vg: str, origin: str, lv: str) -> list[str]:
    # No size: lvm makes a thin snapshot (shares the origin's blocks) rather than an old-style COW one.
    return ["lvcreate", "-s", f"{vg}/{origin}", "-n", lv, "-kn", "-y"]


def activate_argv(vg: str, lvs: Sequence[str]) -> list[str]:
    # -K: activate even if the skip flag is set (lvm sets it on thin snapshots by default).
    return ["lvchange", "-ay", "-K", *(f"{vg}/{lv}" for lv in lvs)]


def resize_argv(vg: str, lv: str, size: int, *, shrink: bool) -> list[str]:
    if shrink:
        return ["lvreduce", "-f", "-L", f"{size}b", f"{vg}/{lv}"]
    return ["lvextend", "-L", f"{size}b", f"{vg}/{lv}"]


def remove_argv(vg: str, lv: str) -> list[str]:
    return ["lvremove", "-f", f"{vg}/{lv}"]


def one_line(stderr: str) -> str:
    """lvm's stderr on one line, without the noise (leaked-fd notices) and with warnings last."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "leaked on" not in line]
    errors = [line for line in lines if not line.startswith("WARNING:")]
    return "; ".join(errors or lines) or "no error message"


# --- running lvm --------------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    return find_tool(name, missing=f"the lvm tool {name} is not found", hint=APT_HINT)


def run(argv: Sequence[str]) -> str:
    """Run one lvm command; DriverError with lvm's stderr as the cause when it fails."""
    # C locale (run_tool): the report's decimal point is '.'; no fd warnings: they would clutter every error.
    return run_tool([_tool(argv[0]), *argv[1:]], what=f"{argv[0]} failed", timeout=COMMAND_TIMEOUT,
                    env={"LVM_SUPPRESS_FD_WARNINGS": "1"}, condense=one_line).stdout


def wait_for_device(path: Path, timeout: float = DEVICE_TIMEOUT) -> None:
    """Activation returns before udev has made /dev/VG/LV: wait for the node so callers can open it at once."""
    udevadm = shutil.which("udevadm") or next((f"{d}/udevadm" for d in ("/usr/bin", "/bin", *SBIN)
                                               if os.access(f"{d}/udevadm", os.X_OK)), None)
    if udevadm is not None:
        # S603: a fixed argument list, no shell.
        subprocess.run([udevadm, "settle", f"--timeout={int(timeout)}"], stdin=subprocess.DEVNULL,  # noqa: S603
                       capture_output=True, check=False, timeout=timeout + 5)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise DriverError(f"{path} did not appear after activation", f"waited {timeout:g}s for udev")
        time.sleep(0.05)


# --- the backend --------------------------------------------------------------------------------------------------


class LvmBackend:
    """Volumes are thin LVs "vf-<name>" in the thin pool `source` = VG/THINPOOL, reachable as /dev/VG/vf-<name>."""

    supports_backing_files = False  # block devices hold no qcow2 chain: linked clones are thin snapshots
    formats: tuple[VolumeFormat, ...] = ("raw",)

    def __init__(self, spec: PoolSpec, mount_path: Path) -> None:
        self.spec = spec
        self.mount_path = mount_path
        self.vg, self.pool = split_source(spec.source)

    # --- lookups --------------------------------------------------------------------------------------------------

    def _lvs(self) -> list[LvInfo]:
        # The whole VG in one report: asking for one missing LV is an error, a missing row is not.
        return parse_lvs(run(lvs_argv(self.vg)))

    def _thin_pool(self, lvs: Sequence[LvInfo] | None = None) -> LvInfo:
        rows = self._lvs() if lvs is None else lvs
        found = next((lv for lv in rows if lv.name == self.pool), None)
        if found is None:
            raise InvalidSpec("source", f"thin pool '{self.vg}/{self.pool}' not found "
                                        f"(create it with: lvcreate -T -L SIZE {self.vg}/{self.pool})")
        if not found.is_thin_pool:
            raise InvalidSpec("source", f"'{self.vg}/{self.pool}' is a {found.segtype or 'plain'} LV, not a thin pool")
        return found

    def _own(self, volume: str, lvs: Sequence[LvInfo] | None = None) -> LvInfo | None:
        """Our LV for `volume`: the name alone is not enough, another virtfleet pool may share the VG."""
        name = lv_name(volume)
        rows = self._lvs() if lvs is None else lvs
        return next((lv for lv in rows if lv.name == name and lv.pool_lv == self.pool), None)

    def _activate(self, lvs: Sequence[str]) -> None:
        run(activate_argv(self.vg, lvs))
        for lv in lvs:
            wait_for_device(Path("/dev") / self.vg / lv)

    # --- PoolBackend ----------------------------------------------------------------------------------------------

    def activate(self) -> None:
        if self.vg not in parse_vgs(run(vgs_argv())):
            raise InvalidSpec("source", f"volume group '{self.vg}' not found (virtfleet uses an existing VG: "
                                        f"create it with vgcreate {self.vg} DEVICE)")
        lvs = self._lvs()
        pool = self._thin_pool(lvs)
        if not pool.active:
            run(["lvchange", "-ay", f"{self.vg}/{self.pool}"])
        # After a reboot our volumes may be inactive (or carry the skip flag): VMs need their /dev paths.
        inactive = [lv.name for lv in lvs if lv.name.startswith(LV_PREFIX) and lv.pool_lv == self.pool
                    and not lv.active]
        if inactive:
            self._activate(inactive)

    def deactivate(self) -> None:
        return None  # the VG belongs to the host; volumes stay active for the VMs that use them

    def destroy(self, *, owns_directory: bool) -> None:
        return None  # we made neither the VG nor the thin pool, so there is nothing of ours to remove

    def usage(self) -> PoolUsage:
        return thin_pool_usage(self._thin_pool())

    def volume_path(self, name: str) -> Path:
        return Path("/dev") / self.vg / lv_name(name)

    def create_volume(self, name: str, fmt: VolumeFormat, size: int, *, backing: Path | None = None,
                      backing_format: VolumeFormat | None = None) -> Path:
        if backing is not None:
            raise Unsupported("lvm pools do not use backing files: they make linked clones by thin snapshot")
        self._check_format(fmt)
        if size <= 0:
            raise InvalidSpec("size", f"must be a positive number of bytes, not {size}")
        lvs = self._lvs()
        self._thin_pool(lvs)
        if any(lv.name == lv_name(name) for lv in lvs):
            raise Conflict(f"logical volume {self.vg}/{lv_name(name)} already exists")
        run(create_argv(self.vg, self.pool, lv_name(name), size))
        return self._activated(name)

    def snapshot_volume(self, name: str, source_name: str) -> Path:
        """A linked clone: a thin snapshot of `source_name`, instant and sharing its blocks until written."""
        lvs = self._lvs()
        if self._own(source_name, lvs) is None:
            raise NotFound("volume", f"{self.spec.name}/{source_name}")
        if any(lv.name == lv_name(name) for lv in lvs):
            raise Conflict(f"logical volume {self.vg}/{lv_name(name)} already exists")
        run(snapshot_argv(self.vg, lv_name(source_name), lv_name(name)))
        return self._activated(name)

    def _activated(self, name: str) -> Path:
        try:
            self._activate([lv_name(name)])
        except BaseException:
            # A volume nobody can open is worse than none: the caller records nothing, so leave nothing.
            with contextlib.suppress(DriverError):
                run(remove_argv(self.vg, lv_name(name)))
            raise
        return self.volume_path(name)

    def resize_volume(self, name: str, fmt: VolumeFormat, size: int, *, shrink: bool = False) -> None:
        self._check_format(fmt)
        if size <= 0:
            raise InvalidSpec("size", f"must be a positive number of bytes, not {size}")
        lv = self._own(name)
        if lv is None:
            raise NotFound("volume", f"{self.spec.name}/{name}")
        target = round_up(size, lv.extent_size)
        if target == lv.size:
            return  # lvextend/lvreduce fail on "no change"
        if target < lv.size and not shrink:
            raise InvalidSpec("size", f"{size} bytes would shrink {lv.name} from {lv.size} bytes and lose the "
                                      "data past the end")
        run(resize_argv(self.vg, lv.name, size, shrink=target < lv.size))

    def delete_volume(self, name: str) -> None:
        if self._own(name) is None:
            return  # already gone (or not ours: never remove an LV of another pool)
        run(remove_argv(self.vg, lv_name(name)))

    def _check_format(self, fmt: str) -> None:
        if fmt not in self.formats:
            raise InvalidSpec("format", f"lvm pools hold raw volumes only, not {fmt}")
