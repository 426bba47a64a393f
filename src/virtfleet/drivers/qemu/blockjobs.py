"""Live block operations over QMP: external snapshots, block-commit and internal (memory) snapshots.

Sequences verified on QEMU 7.2 under TCG: blockdev-add of a qcow2 overlay with "backing": null followed by
blockdev-snapshot; block-commit with auto-dismiss off (an active commit reaches "ready" and needs job-complete);
snapshot-save/load/delete are jobs whose failure is only visible in query-jobs, and never auto-dismiss.

Jobs outlive the agent that started them (QEMU keeps running), so everything here can be called again after a crash:
query-block says which image each disk really writes, a commit finishes or adopts the job an earlier call left, and
images that no disk uses any more are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from virtfleet.drivers.base import DiskChain, OpenImage
from virtfleet.drivers.qemu.monitor import Monitor
from virtfleet.errors import DriverError, OperationTimeout

JOB_TIMEOUT = 600.0

BeforeComplete = Callable[[], Awaitable[None]]


async def wait_job(monitor: Monitor, job_id: str, *, timeout: float = JOB_TIMEOUT,
                   before_complete: BeforeComplete | None = None) -> None:
    """Wait for a QMP job to conclude, completing it when it turns ready; dismiss it; raise its error."""
    deadline = time.monotonic() + timeout
    completed = False
    while True:
        jobs: list[dict[str, Any]] = await monitor.execute("query-jobs")
        job = next((j for j in jobs if j["id"] == job_id), None)
        if job is None:
            raise DriverError(f"QMP job {job_id} vanished", "it was dismissed by someone else")
        if job["status"] == "ready" and not completed:
            if before_complete is not None:
                await before_complete()
            await monitor.execute("job-complete", {"id": job_id})
            completed = True
        elif job["status"] == "concluded":
            await monitor.execute("job-dismiss", {"id": job_id})
            if "error" in job:
                raise DriverError(f"QMP job {job_id} failed", str(job["error"]))
            return
        if time.monotonic() > deadline:
            await monitor.execute("job-cancel", {"id": job_id})
            raise OperationTimeout(f"QMP job {job_id} did not finish within {timeout:g}s")
        await asyncio.sleep(0.05)


async def settle_jobs(monitor: Monitor) -> list[str]:
    """Bring every job QEMU still has to its end (a ready commit is completed); the errors of those that failed.

    Only virtfleet starts jobs in its QEMUs (commits and internal snapshots), and for each of them going on is the
    way forward: a ready commit has written everything into its base already."""
    errors = []
    for job in await monitor.execute("query-jobs"):
        try:
            await wait_job(monitor, str(job["id"]))
        except DriverError as error:
            errors.append(f"{job.get('type', 'block')} job {job['id']}: {error.message}")
    return errors


async def devices(monitor: Monitor) -> list[tuple[str, DiskChain]]:
    """Per disk: the node name of its active layer and its chain of open images, active layer first."""
    found = []
    for device in await monitor.execute("query-block"):
        inserted = device.get("inserted")
        if not inserted:
            continue
        chain: list[OpenImage] = []
        image: dict[str, Any] | None = inserted.get("image")
        while image is not None:
            tags = tuple(str(snapshot["name"]) for snapshot in image.get("snapshots", ()))
            chain.append(OpenImage(str(image["filename"]), tags))
            image = image.get("backing-image")
        found.append((str(inserted["node-name"]), tuple(chain)))
    return found


async def nodes_by_path(monitor: Monitor) -> dict[str, str]:
    """Image file path -> its format node's name, for every image the VM has open."""
    nodes: list[dict[str, Any]] = await monitor.execute("query-named-block-nodes", {"flat": True})
    return {node["file"]: node["node-name"] for node in nodes if node.get("drv") in ("qcow2", "raw")}


async def node_for(monitor: Monitor, path: str) -> str:
    node = (await nodes_by_path(monitor)).get(path)
    if node is None:
        raise DriverError(f"the VM has no image {path} open", "its disks changed behind virtfleet's back?")
    return node


async def release(monitor: Monitor, paths: list[str]) -> None:
    """blockdev-del the nodes of these images; QEMU refuses (and we let it) for a node any disk still uses."""
    for wanted in ({"qcow2", "raw"}, {"file"}):  # format nodes first: they hold their file nodes
        nodes: list[dict[str, Any]] = await monitor.execute("query-named-block-nodes", {"flat": True})
        for node in nodes:
            if node.get("drv") in wanted and node.get("file") in paths:
                with contextlib.suppress(DriverError):
                    await monitor.execute("blockdev-del", {"node-name": node["node-name"]})


async def external_snapshot(monitor: Monitor, overlays: list[tuple[str, str, str]]) -> None:
    """(current top path, new overlay path, new node name) per disk: all switch to their overlay at once."""
    added: list[str] = []
    try:
        actions = []
        for top, overlay, node in overlays:
            base = await node_for(monitor, top)
            await monitor.execute("blockdev-add", {
                "driver": "qcow2", "node-name": node, "backing": None,
                "file": {"driver": "file", "filename": overlay, "node-name": f"{node}-file"},
            })
            added.append(node)
            actions.append({"type": "blockdev-snapshot", "data": {"node": base, "overlay": node}})
        await monitor.execute("transaction", {"actions": actions})
    except BaseException:
        for node in added:  # a transaction is all or nothing; so is what we added for it
            with contextlib.suppress(DriverError):
                await monitor.execute("blockdev-del", {"node-name": node})
        raise


async def commit(monitor: Monitor, top: str, base: str, job_id: str, *,
                 before_pivot: BeforeComplete | None = None) -> None:
    """Merge the layer `top` (and anything between) into `base`, in the disk whose chain holds both.

    `job_id` is the same for every attempt at this merge, so a job an earlier (crashed) attempt left behind is
    finished first instead of blocking this one; a `top` already gone from the chain is merged already."""
    if any(job["id"] == job_id for job in await monitor.execute("query-jobs")):
        with contextlib.suppress(DriverError):  # a failure of the earlier attempt: the check below decides
            await wait_job(monitor, job_id, before_complete=before_pivot)
    chain_of_base = [(node, chain) for node, chain in await devices(monitor)
                     if base in (image.path for image in chain)]
    if not chain_of_base:
        raise DriverError(f"no disk of the VM has {base} open", "its disks changed behind virtfleet's back?")
    active_node, chain = chain_of_base[0]
    paths = [image.path for image in chain]
    if top in paths:
        if paths.index(top) >= paths.index(base):
            raise DriverError(f"cannot merge {top} into {base}", f"{base} is not below it in the chain")
        top_node = active_node if paths[0] == top else await node_for(monitor, top)
        await monitor.execute("block-commit", {"job-id": job_id, "device": active_node, "top-node": top_node,
                                               "base-node": await node_for(monitor, base), "auto-dismiss": False})
        await wait_job(monitor, job_id, before_complete=before_pivot)
    await release(monitor, [top])  # opened with -blockdev or blockdev-add, it stays open until deleted


async def internal_snapshot(monitor: Monitor, command: str, tag: str, paths: list[str], job_id: str) -> None:
    """snapshot-save / snapshot-load / snapshot-delete over the images at `paths` (RAM goes into the first)."""
    nodes = [await node_for(monitor, path) for path in paths]
    args: dict[str, object] = {"job-id": job_id, "tag": tag, "devices": nodes}
    if command != "snapshot-delete":
        args["vmstate"] = nodes[0]
    await monitor.execute(command, args)
    await wait_job(monitor, job_id)
