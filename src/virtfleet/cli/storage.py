"""`virtfleet pool ...` and `virtfleet volume ...`"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from virtfleet.cli.output import JsonOption, err, out, run, run_job, table

pools = typer.Typer(help="Storage pools.", no_args_is_help=True)
volumes = typer.Typer(help="Volumes (disk images) in storage pools.", no_args_is_help=True)


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= factor:
            return f"{value / factor:.1f}{unit}"
    return f"{value}B"


def _ref(ref: str) -> str:
    """"pool/name" or "name" (default pool) -> the API path part."""
    return ref if "/" in ref else f"default/{ref}"


# --- pools ------------------------------------------------------------------------------------------------------
def _pool_rows(items: list[dict[str, Any]]) -> None:
    table(["NAME", "TYPE", "STATE", "PATH", "CAPACITY", "ALLOCATED", "AVAILABLE"], [
        [p["name"], p["spec"]["type"], p["state"], p["mount_path"],
         _size((p["usage"] or {}).get("capacity")), _size((p["usage"] or {}).get("allocation")),
         _size((p["usage"] or {}).get("available"))] for p in items
    ])


@pools.command("list")
def pool_list(as_json: bool = JsonOption) -> None:
    """List pools with capacity and allocation."""
    run(as_json, lambda c: c.get("/pools"), _pool_rows)


@pools.command("create")
def pool_create(
    name: str,
    type_: str = typer.Option("dir", "--type", help="dir, lvm or nfs."),
    path: str | None = typer.Option(None, help="dir: the directory; nfs: where to mount (optional)."),
    source: str | None = typer.Option(None, help="lvm: VG/THINPOOL; nfs: HOST:/EXPORT."),
    as_json: bool = JsonOption,
) -> None:
    """Create a pool (the directory is created; nfs is mounted; lvm must exist)."""
    body = {"name": name, "type": type_, "path": path, "source": source}
    run(as_json, lambda c: c.post("/pools", json={k: v for k, v in body.items() if v is not None}),
        lambda p: _pool_rows([p]))


@pools.command("show")
def pool_show(name: str, as_json: bool = JsonOption) -> None:
    """Show one pool."""
    run(as_json, lambda c: c.get(f"/pools/{name}"), lambda p: _pool_rows([p]))


@pools.command("delete")
def pool_delete(name: str, as_json: bool = JsonOption) -> None:
    """Delete an empty pool (its directory is removed only if empty)."""
    run(as_json, lambda c: c.delete(f"/pools/{name}") or {"deleted": name},
        lambda _r: out.print(f"deleted pool {name}"))


# --- volumes ----------------------------------------------------------------------------------------------------
def _volume_rows(items: list[dict[str, Any]]) -> None:
    table(["VOLUME", "FORMAT", "SIZE", "TEMPLATE", "BASE", "ATTACHED TO", "PATH"], [
        [f"{v['pool']}/{v['name']}", v["format"], _size(v["size"]), "yes" if v["template"] else "-",
         v["base"] or "-", v["attached_to"] or "-", v["path"]] for v in items
    ])


@volumes.command("list")
def volume_list(pool: str | None = typer.Option(None, help="Only this pool."), as_json: bool = JsonOption) -> None:
    """List volumes."""
    run(as_json, lambda c: c.get("/volumes", pool=pool), _volume_rows)


@volumes.command("create")
def volume_create(
    ref: str = typer.Argument(..., help="POOL/NAME (or NAME in the default pool)"),
    size: str = typer.Option(..., help="Virtual size, e.g. 10G."),
    format_: str = typer.Option("qcow2", "--format", help="qcow2 or raw."),
    as_json: bool = JsonOption,
) -> None:
    """Create an empty volume."""
    pool, name = _ref(ref).split("/", 1)
    run_job(as_json, lambda c: c.post(f"/pools/{pool}/volumes", json={"name": name, "size": size, "format": format_}))


@volumes.command("show")
def volume_show(ref: str, as_json: bool = JsonOption) -> None:
    """Show a volume: virtual and actual size, format, backing chain, who uses it."""

    def render(d: dict[str, Any]) -> None:
        v = d["volume"]
        for key, value in [("volume", f"{v['pool']}/{v['name']}"), ("format", v["format"]),
                           ("virtual size", f"{_size(v['size'])} ({v['size']} bytes)"),
                           ("actual size", f"{_size(d['actual_size'])} ({d['actual_size']} bytes)"),
                           ("template", "yes" if v["template"] else "no"), ("base", v["base"] or "-"),
                           ("attached to", v["attached_to"] or "-"), ("path", v["path"]),
                           ("backing chain", " -> ".join(d["backing_chain"]))]:
            out.print(f"[bold]{key:>13}[/bold]  {value}")

    run(as_json, lambda c: c.get(f"/volumes/{_ref(ref)}"), render)


@volumes.command("resize")
def volume_resize(ref: str, size: str = typer.Option(..., help="New virtual size, e.g. 20G."),
                  force: bool = typer.Option(False, "--force", help="Allow shrinking (loses data)."),
                  as_json: bool = JsonOption) -> None:
    """Grow a volume (shrinking needs --force)."""
    run_job(as_json, lambda c: c.post(f"/volumes/{_ref(ref)}/resize", json={"size": size, "shrink": force}))


@volumes.command("delete")
def volume_delete(ref: str, as_json: bool = JsonOption) -> None:
    """Delete a volume (refused while a VM uses it or linked clones depend on it)."""
    run_job(as_json, lambda c: c.delete(f"/volumes/{_ref(ref)}"))


@volumes.command("template")
def volume_template(ref: str, undo: bool = typer.Option(False, "--undo", help="Make it an ordinary volume again."),
                    as_json: bool = JsonOption) -> None:
    """Mark a volume as a template (read-only base for linked clones)."""
    run(as_json, lambda c: c.post(f"/volumes/{_ref(ref)}/template", json={"template": not undo}),
        lambda v: _volume_rows([v]))


@volumes.command("clone")
def volume_clone(
    ref: str, name: str,
    full: bool = typer.Option(False, "--full-clone", help="Copy the data instead of a linked (qcow2) clone."),
    pool: str | None = typer.Option(None, help="Target pool (full clones only)."),
    as_json: bool = JsonOption,
) -> None:
    """Clone a volume: linked (instant, backed by the template) or full (a copy)."""
    run_job(as_json, lambda c: c.post(f"/volumes/{_ref(ref)}/clone", json={"name": name, "linked": not full,
                                                                         "pool": pool}))


def _progress(label: str) -> Any:
    def show(done: int, total: int) -> None:
        if sys.stderr.isatty():
            percent = f" ({done * 100 // total}%)" if total else ""
            err.print(f"\r{label}: {done >> 20} of {total >> 20} MiB{percent}", end="")
    return show


@volumes.command("upload")
def volume_upload(
    ref: str, file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    format_: str = typer.Option(..., "--format", help="qcow2, raw, vmdk, vhdx, vpc or vdi (never guessed)."),
    sha256: str | None = typer.Option(None, help="Refuse the upload unless the data has this checksum."),
    as_json: bool = JsonOption,
) -> None:
    """Upload a local disk image into a pool (checked: format, no backing files outside pools, checksum)."""
    pool, name = _ref(ref).split("/", 1)
    run(as_json, lambda c: c.upload(f"/pools/{pool}/volumes/{name}/data", file, _progress("uploading"),
                                    format=format_, sha256=sha256), lambda v: _volume_rows([v]))


@volumes.command("import")
def volume_import(
    ref: str, url: str,
    format_: str = typer.Option(..., "--format", help="qcow2, raw, vmdk, vhdx, vpc or vdi (never guessed)."),
    sha256: str | None = typer.Option(None, help="Refuse the image unless it has this checksum."),
    as_json: bool = JsonOption,
) -> None:
    """Download a disk image from an http(s) URL into a pool, with progress and checksum verification."""
    pool, name = _ref(ref).split("/", 1)
    run_job(as_json, lambda c: c.post(f"/pools/{pool}/volumes/{name}/import",
                                      json={"url": url, "format": format_, "sha256": sha256}))


@volumes.command("download")
def volume_download(ref: str, dest: Path, as_json: bool = JsonOption) -> None:
    """Download (export) a volume's image file."""
    run(as_json, lambda c: {"bytes": c.download(f"/volumes/{_ref(ref)}/data", dest, _progress("downloading")),
                            "path": str(dest)},
        lambda r: out.print(f"\nwrote {r['path']} ({r['bytes']} bytes)"))
