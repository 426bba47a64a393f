"""Live block operations over QMP: external snapshots, block-commit and internal (memory) snapshots.

Sequences verified on QEMU 7.2 under TCG: blockdev-add of a qcow2 overlay with "backing": null followed by
blockdev-snapshot; block-commit with auto-dismiss off (an active commit reaches "ready" and needs job-complete);
snapshot-save/load/delete are jobs whose failure is only visible in query-jobs, and never auto-dismiss.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from virtfleet.drivers.qemu.monitor import Monitor
from virtfleet.errors import DriverError, OperationTimeout

JOB_TIMEOUT = 600.0


async def wait_job(monitor: Monitor, job_id: str, *, timeout: float = JOB_TIMEOUT) -> None:
    """Wait for a QMP job to conclude, completing it when it turns ready; dismiss it; raise its error."""
    deadline = time.monotonic() + timeout
    completed = False
    while True:
        jobs: list[dict[str, Any]] = await monitor.execute("query-jobs")
        job = next((j for j in jobs if j["id"] == job_id), None)
        if job is None:
            raise DriverError(f"QMP job {job_id} vanished", "it was dismissed by someone else")
        if job["status"] == "ready" and not completed:
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


async def nodes_by_path(monitor: Monitor) -> dict[str, str]:
    """Image file path -> its format node's name, for every image the VM has open."""
    nodes: list[dict[str, Any]] = await monitor.execute("query-named-block-nodes", {"flat": True})
    return {node["file"]: node["node-name"] for node in nodes if node.get("drv") in ("qcow2", "raw")}


async def node_for(monitor: Monitor, path: str) -> str:
    node = (await nodes_by_path(monitor)).get(path)
    if node is None:
        raise DriverError(f"the VM has no image {path} open", "its disks changed behind virtfleet's back?")
    return node


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


async def commit(monitor: Monitor, device_top: str, top: str, base: str, job_id: str) -> None:
    """Merge the layer `top` (and anything between) into `base`; `device_top` is the disk's active image."""
    top_node, base_node, active_node = (await node_for(monitor, top), await node_for(monitor, base),
                                        await node_for(monitor, device_top))
    await monitor.execute("block-commit", {"job-id": job_id, "device": active_node, "top-node": top_node,
                                           "base-node": base_node, "auto-dismiss": False})
    await wait_job(monitor, job_id)
    # A node we opened with blockdev-add stays until deleted; -blockdev ones are dropped with the chain.
    with contextlib.suppress(DriverError):
        await monitor.execute("blockdev-del", {"node-name": top_node})


async def internal_snapshot(monitor: Monitor, command: str, tag: str, paths: list[str], job_id: str) -> None:
    """snapshot-save / snapshot-load / snapshot-delete over the images at `paths` (RAM goes into the first)."""
    nodes = [await node_for(monitor, path) for path in paths]
    args: dict[str, object] = {"job-id": job_id, "tag": tag, "devices": nodes}
    if command != "snapshot-delete":
        args["vmstate"] = nodes[0]
    await monitor.execute(command, args)
    await wait_job(monitor, job_id)
