"""Live block operations over libvirt: external disk snapshots, block commits and the chains a domain has open.

The counterpart of drivers/qemu/blockjobs.py, with the same contracts (drivers/base.py). Sequences verified with
libvirt 9.0 and QEMU 7.2 (blockdev mode) under TCG: an external disk-only snapshot onto overlays the caller made
(REUSE_EXT) switches every disk in one QMP transaction (ATOMIC); an active commit is ready once libvirt's live XML
shows `<mirror ready='yes'>`, and blockJobAbort(PIVOT) then switches the disk to the base.

libvirt owns the QEMU monitor, so the truth is what libvirt says: the live XML (XMLDesc(0)) names each disk's chain
and the base an active commit is copying into; blockJobInfo names a disk's running job. Both outlive the agent, so
everything here can be called again after a crash. The one thing libvirt does not show is which internal (memory)
snapshots an image holds: those are read from the images themselves (qemu-img -U).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from virtfleet.drivers.base import DiskChain, MemoryAction, OpenImage
from virtfleet.errors import DriverError, OperationTimeout, Unsupported
from virtfleet.storage import qemu_img

JOB_TIMEOUT = 600.0
POLL_SECONDS = 0.05

BeforePivot = Callable[[], Awaitable[None]]

SNAPSHOT_FLAGS = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
                  | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)

# Jobs that copy into another image and wait, once ready, to be told to switch the disk to it.
MIRROR_JOBS = (libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT, libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY)
# Jobs that, when they succeed, take images out of the disk's chain.
SHORTENING_JOBS = (libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT, libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT,
                   libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL)
JOB_NAMES = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL: "pull",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: "copy",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: "commit",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: "active commit",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP: "backup",
}


# --- the live XML (pure) --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveDisk:
    """One disk of a running domain as libvirt has it: its images, active layer first (paths as libvirt spells
    them), and the image a mirroring job (an active commit) copies into."""

    target: str  # <target dev=...>: how libvirt's block APIs name the disk
    chain: tuple[str, ...]
    formats: tuple[str, ...] = ()  # each image's format ("qcow2", "raw"), "" where libvirt names none
    mirror: str | None = None
    mirror_ready: bool = False
    readonly: bool = False

    def index(self, path: str) -> int | None:
        """Where `path` is in the chain (compared as normalised paths), None when it is not."""
        wanted = os.path.normpath(path)
        return next((i for i, image in enumerate(self.chain) if os.path.normpath(image) == wanted), None)


def _source_path(element: ET.Element) -> str | None:
    source = element.find("source")
    if source is None:
        return None
    return source.get("file") or source.get("dev")  # network sources have no path; callers name only files


def _format(element: ET.Element | None) -> str:
    return "" if element is None else element.get("type", "")


def parse_live_disks(domain_xml: str) -> list[LiveDisk]:
    """The disks with a local image (file or block device) in a domain's live XML, each with its backing chain."""
    disks = []
    root = ET.fromstring(domain_xml)  # noqa: S314 - written by libvirtd, not by users or guests
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        active = _source_path(disk)
        if target is None or target.get("dev") is None or active is None:
            continue  # an empty CD-ROM drive, or a network disk
        chain, formats = [active], [_format(disk.find("driver"))]
        layer = disk.find("backingStore")
        while layer is not None and (path := _source_path(layer)) is not None:
            chain.append(path)  # the chain ends in an empty <backingStore/>, or with no element at all
            formats.append(_format(layer.find("format")))
            layer = layer.find("backingStore")
        mirror = disk.find("mirror")
        disks.append(LiveDisk(
            target=str(target.get("dev")), chain=tuple(chain), formats=tuple(formats),
            mirror=None if mirror is None else (_source_path(mirror) or mirror.get("file")),
            mirror_ready=mirror is not None and mirror.get("ready") == "yes",
            readonly=disk.find("readonly") is not None))
    return disks


def snapshot_xml(disks: list[LiveDisk], overlays: dict[str, str]) -> str:
    """A <domainsnapshot> switching the disks named in `overlays` (target -> overlay path) to their pre-made qcow2
    overlays, and leaving every other disk alone (libvirt would otherwise snapshot each disk by its default)."""
    root = ET.Element("domainsnapshot")
    listed = ET.SubElement(root, "disks")
    for disk in disks:
        overlay = overlays.get(disk.target)
        if overlay is None:
            ET.SubElement(listed, "disk", name=disk.target, snapshot="no")
            continue
        entry = ET.SubElement(listed, "disk", name=disk.target, snapshot="external", type="file")
        ET.SubElement(entry, "driver", type="qcow2")
        ET.SubElement(entry, "source", file=overlay)
    unknown = set(overlays) - {disk.target for disk in disks}
    if unknown:
        raise ValueError(f"no disk {', '.join(sorted(unknown))} in the domain")
    return ET.tostring(root, encoding="unicode")


def memory_snapshot_xml(disks: list[LiveDisk], tag: str) -> str:
    """A <domainsnapshot> named `tag` saving RAM and device state and every writable disk internally (libvirt
    refuses an internal snapshot that leaves out a writable disk); read-only disks are left alone."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = tag
    ET.SubElement(root, "memory", snapshot="internal")
    listed = ET.SubElement(root, "disks")
    for disk in disks:
        ET.SubElement(listed, "disk", name=disk.target, snapshot="no" if disk.readonly else "internal")
    return ET.tostring(root, encoding="unicode")


def recorded_snapshot_xml(disks: list[LiveDisk], tag: str, created: int, domain_xml: str) -> str:
    """libvirt's record of an internal snapshot, taken at `created` (seconds since the epoch), of the running
    domain described by `domain_xml`."""
    root = ET.fromstring(memory_snapshot_xml(disks, tag))  # noqa: S314 - our own output
    ET.SubElement(root, "state").text = "running"
    ET.SubElement(root, "creationTime").text = str(created)
    root.append(ET.fromstring(domain_xml))  # noqa: S314 - written by libvirtd
    return ET.tostring(root, encoding="unicode")


# --- libvirt calls (each off the event loop) ------------------------------------------------------------------
def _failed(what: str, error: libvirt.libvirtError) -> DriverError:
    return DriverError(what, str(error.get_error_message() or error))


async def _live_disks(domain: Any) -> list[LiveDisk]:
    try:
        return parse_live_disks(await asyncio.to_thread(domain.XMLDesc, 0))
    except libvirt.libvirtError as error:
        raise _failed("cannot read the domain's live XML", error) from error


async def _job(domain: Any, target: str) -> dict[str, int]:
    """The disk's block job (type, cur, end, bandwidth), or {} when it has none."""
    try:
        info: dict[str, int] | None = await asyncio.to_thread(domain.blockJobInfo, target, 0)
    except libvirt.libvirtError as error:
        raise _failed(f"cannot read the block job of disk {target}", error) from error
    return info or {}


def _disk(disks: list[LiveDisk], target: str) -> LiveDisk | None:
    return next((disk for disk in disks if disk.target == target), None)


def _disk_holding(disks: list[LiveDisk], path: str) -> LiveDisk:
    disk = next((disk for disk in disks if disk.index(path) is not None), None)
    if disk is None:
        raise DriverError(f"no disk of the domain has {path} open", "its disks changed behind virtfleet's back?")
    return disk


async def _wait_until(predicate: Callable[[], Awaitable[bool]], deadline: float, what: str) -> None:
    while not await predicate():
        if time.monotonic() > deadline:
            raise OperationTimeout(what)
        await asyncio.sleep(POLL_SECONDS)


async def _finish_job(domain: Any, target: str, *, before_pivot: BeforePivot | None = None,
                      timeout: float = JOB_TIMEOUT) -> None:
    """Wait for the disk's block job to end; a mirroring job (active commit) is completed once ready: its data is
    in the base already, and blockJobAbort(PIVOT) switches the disk to it."""
    deadline = time.monotonic() + timeout
    while True:
        job = await _job(domain, target)
        if not job:
            return
        if job.get("type") in MIRROR_JOBS:
            # libvirt pivots only once it has seen QEMU's READY event, which its live XML shows (blockJobInfo's
            # cur == end can come first).
            disk = _disk(await _live_disks(domain), target)
            if disk is not None and disk.mirror_ready:
                if before_pivot is not None:
                    await before_pivot()
                await _pivot(domain, target, disk, deadline)
                return
        if time.monotonic() > deadline:
            try:
                await asyncio.to_thread(domain.blockJobAbort, target, 0)
            except libvirt.libvirtError as error:
                raise _failed(f"the block job of disk {target} timed out and cannot be cancelled", error) from error
            raise OperationTimeout(f"the block job of disk {target} did not finish within {timeout:g}s")
        await asyncio.sleep(POLL_SECONDS)


async def _pivot(domain: Any, target: str, disk: LiveDisk, deadline: float) -> None:
    """Switch a disk to the image its ready mirroring job copied into, and wait until libvirt writes it."""
    base = disk.mirror
    try:
        # Synchronous: libvirt returns once QEMU has completed the job, whoever calls (a retry after a crash too).
        await asyncio.to_thread(domain.blockJobAbort, target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
    except libvirt.libvirtError as error:
        raise _failed(f"cannot switch disk {target} to {base}", error) from error

    async def switched() -> bool:
        now = _disk(await _live_disks(domain), target)
        return now is None or base is None or now.index(base) == 0

    await _wait_until(switched, deadline, f"disk {target} did not switch to {base} after the pivot")


# --- the operations -------------------------------------------------------------------------------------------
async def snapshot_disks(domain: Any, overlays: list[tuple[str, str]]) -> None:
    """Switch each disk writing `top` to its pre-made empty `overlay` (a qcow2 backed by `top`), all disks at the
    same instant; libvirt records no snapshot metadata (virtfleet keeps its own records)."""
    disks = await _live_disks(domain)
    by_target: dict[str, str] = {}
    for top, overlay in overlays:
        disk = next((disk for disk in disks if disk.index(top) == 0), None)
        if disk is None:
            raise DriverError(f"no disk of the domain writes {top}", "its disks changed behind virtfleet's back?")
        if disk.target in by_target:
            raise DriverError(f"disk {disk.target} is given two overlays", f"{by_target[disk.target]} and {overlay}")
        by_target[disk.target] = overlay
    try:
        await asyncio.to_thread(domain.snapshotCreateXML, snapshot_xml(disks, by_target), SNAPSHOT_FLAGS)
    except libvirt.libvirtError as error:
        raise _failed("libvirt could not switch the disks to their overlays", error) from error


async def commit_disk(domain: Any, top: str, base: str, *, before_pivot: BeforePivot | None = None,
                      timeout: float = JOB_TIMEOUT) -> None:
    """Merge the layer `top` (and anything between) into `base`, in the disk whose chain holds both.

    Idempotent: a job an earlier (crashed) attempt left on that disk is finished first, and a `top` no longer in
    the chain is merged already. When `top` is the active layer, `before_pivot` is awaited once `base` holds all
    its data, right before the disk switches to `base`."""
    disk = _disk_holding(await _live_disks(domain), base)
    job = await _job(domain, disk.target)
    if job:
        ours = (job.get("type") == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT and disk.index(top) == 0
                and disk.mirror is not None and os.path.normpath(disk.mirror) == os.path.normpath(base))
        if job.get("type") in MIRROR_JOBS and not ours:
            raise DriverError(f"disk {disk.target} is busy with another {JOB_NAMES.get(job['type'], 'block')} job",
                              f"it copies into {disk.mirror}; settle it first")
        with contextlib.suppress(DriverError):  # a failure of the earlier attempt: the chain read below decides
            await _finish_job(domain, disk.target, before_pivot=before_pivot if ours else None, timeout=timeout)
        disk = _disk_holding(await _live_disks(domain), base)
    position, below = disk.index(top), disk.index(base)
    if position is None:
        return  # merged already
    assert below is not None  # noqa: S101 - _disk_holding found it
    if position >= below:
        raise DriverError(f"cannot merge {top} into {base}", f"{base} is not below it in the chain")
    active = position == 0
    flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE if active else 0
    try:
        # Paths as libvirt spells them in the live XML: its chain lookup compares those.
        await asyncio.to_thread(domain.blockCommit, disk.target, disk.chain[below], disk.chain[position], 0, flags)
    except libvirt.libvirtError as error:
        raise _failed(f"libvirt could not start merging {top} into {base}", error) from error
    await _finish_job(domain, disk.target, before_pivot=before_pivot if active else None, timeout=timeout)
    after = _disk(await _live_disks(domain), disk.target)
    if after is not None and after.index(top) is not None:
        raise DriverError(f"the merge of {top} into {base} ended with {top} still in the chain",
                          "the block job failed; libvirtd's log has QEMU's error")


def _tags(path: str, fmt: str) -> tuple[str, ...]:
    """The internal snapshot names in a qcow2 image (read with qemu-img -U: QEMU holds the image's lock)."""
    if fmt != "qcow2":
        return ()
    return tuple(snapshot.name for snapshot in qemu_img.info(Path(path), "qcow2").snapshots)


async def disk_chains(domain: Any) -> list[DiskChain]:
    """What a running domain has open, per disk, active layer first (libvirt's live XML, which it keeps in step
    with QEMU), with the internal snapshots each qcow2 image holds: read from the images, not from libvirt's
    snapshot metadata, because the images are what a memory snapshot's recovery must judge."""
    return await asyncio.to_thread(_chains_of, await _live_disks(domain))


def _chains_of(disks: list[LiveDisk]) -> list[DiskChain]:
    return [tuple(OpenImage(os.path.normpath(path), _tags(path, fmt))
                  for path, fmt in zip(disk.chain, disk.formats, strict=True)) for disk in disks]


async def settle_block_jobs(domain: Any, *, timeout: float = JOB_TIMEOUT) -> list[str]:
    """Bring every block job libvirt still runs for the domain to its end (a ready commit is completed: its data is
    in the base already); the errors of those that failed.

    libvirt forgets a finished job, so a failure shows as a commit that ended with the chain as long as before."""
    errors = []
    for disk in await _live_disks(domain):
        job = await _job(domain, disk.target)
        if not job:
            continue
        kind = f"{JOB_NAMES.get(job.get('type', 0), 'block')} job on disk {disk.target}"
        try:
            await _finish_job(domain, disk.target, timeout=timeout)
        except DriverError as error:
            errors.append(f"{kind}: {error.message}")
            continue
        after = _disk(await _live_disks(domain), disk.target)
        if job.get("type") in SHORTENING_JOBS and after is not None and len(after.chain) >= len(disk.chain):
            errors.append(f"{kind}: it ended without taking any image out of the chain (it failed; libvirtd's "
                          "log has QEMU's error)")
    return errors


async def release_images(domain: Any, paths: list[str]) -> None:
    """Nothing to close: unlike the qemu driver (which opens overlays with blockdev-add before it switches), libvirt
    opens an image only as part of a disk's chain. A refused or failed snapshot is rolled back inside libvirtd
    (ATOMIC), and a pivot or a finished commit has libvirtd close the images it took out of the chain. An agent
    that dies in the middle leaves the call to libvirtd, which finishes it, so no image is left open outside a
    chain; images in a chain stay open, as the contract says."""
    del domain, paths


async def memory_snapshot(domain: Any, action: MemoryAction, tag: str, images: list[str]) -> None:
    """Save, load or delete the internal snapshot `tag` with RAM and device state.

    libvirt 9.0 saves with HMP savevm (the VM paused meanwhile) into every writable disk and nothing else, so
    `images` must be exactly their active images; it keeps metadata for it (unlike for disk snapshots), as it
    loads and deletes only snapshots it has a record of. A load kills QEMU and starts a new one with -loadvm (same
    domain id; console connections drop and must be made again), and leaves the VM running, as the qemu driver's
    does."""
    if action == "save":
        if not images:
            raise Unsupported("a memory snapshot needs a qcow2 disk to hold the VM state; attach one")
        disks = await _live_disks(domain)
        writable = {os.path.normpath(disk.chain[0]) for disk in disks if not disk.readonly}
        wanted = {os.path.normpath(image) for image in images}
        if wanted != writable:
            raise DriverError(f"libvirt saves a memory snapshot into every writable disk's active image "
                              f"({', '.join(sorted(writable))})", f"not into {', '.join(sorted(wanted))}")
        try:
            await asyncio.to_thread(domain.snapshotCreateXML, memory_snapshot_xml(disks, tag), 0)
        except libvirt.libvirtError as error:
            raise _failed(f"libvirt could not save memory snapshot {tag}", error) from error
        return
    snapshot = await _recorded_snapshot(domain, tag)
    if snapshot is None:
        if action == "delete":
            return  # in no image: deleted already
        raise DriverError(f"no memory snapshot {tag} to load", "no disk's image holds it")
    try:
        if action == "load":
            await asyncio.to_thread(domain.revertToSnapshot, snapshot, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
        else:
            await asyncio.to_thread(snapshot.delete, 0)
    except libvirt.libvirtError as error:
        raise _failed(f"libvirt could not {action} memory snapshot {tag}", error) from error


async def _recorded_snapshot(domain: Any, tag: str) -> Any:
    """libvirt's handle on the internal snapshot `tag`; None when no image holds it.

    The images are the truth and libvirt's metadata a record of them, which goes with a transient domain or a
    domain defined again. When the record is missing but every writable disk's active image holds the tag, it is
    recorded again (REDEFINE) with the domain as it is now: a memory snapshot can only be loaded while its images
    are the disks' active ones, so this is the domain it was taken of, as far as its disks go."""
    try:
        return await asyncio.to_thread(domain.snapshotLookupByName, tag, 0)
    except libvirt.libvirtError as error:
        if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise _failed(f"cannot look up memory snapshot {tag}", error) from error
    disks = await _live_disks(domain)
    chains = await asyncio.to_thread(_chains_of, disks)
    holding = [image.path for chain in chains for image in chain if tag in image.snapshots]
    if not holding:
        return None
    tops = {chain[0].path for disk, chain in zip(disks, chains, strict=True) if chain and not disk.readonly}
    if set(holding) != tops:
        raise DriverError(f"memory snapshot {tag} is in {', '.join(sorted(holding))}",
                          f"libvirt can load or delete it only from every writable disk's active image "
                          f"({', '.join(sorted(tops))})")
    saved = await asyncio.to_thread(qemu_img.info, Path(holding[0]), "qcow2")
    created = next(int(snapshot.date.timestamp()) for snapshot in saved.snapshots if snapshot.name == tag)
    try:
        current = await asyncio.to_thread(domain.XMLDesc, 0)
        return await asyncio.to_thread(domain.snapshotCreateXML,
                                       recorded_snapshot_xml(disks, tag, created, current),
                                       libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
    except libvirt.libvirtError as error:
        raise _failed(f"libvirt could not record memory snapshot {tag} again", error) from error
