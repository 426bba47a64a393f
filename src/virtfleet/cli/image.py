"""`virtfleet image ...`"""

from __future__ import annotations

from typing import Any

import typer

from virtfleet.cli.output import JsonOption, out, run, run_job, table

app = typer.Typer(help="Guest images.", no_args_is_help=True)


@app.command()
def build(name: str = typer.Argument("tiny"), no_wait: bool = typer.Option(False, "--no-wait"),
          as_json: bool = JsonOption) -> None:
    """Build an image from the host's packages (tiny: Debian kernel + busybox initramfs)."""
    run_job(as_json, lambda c: c.post(f"/images/{name}/build"), wait=not no_wait)


def _rows(images: list[dict[str, Any]]) -> None:
    table(["NAME", "BUILT", "KERNEL", "SIZE", "PATH"], [
        [i["name"], "yes" if i["built"] else "no", i["kernel_release"] or "-",
         f"{i['size_bytes'] / 2**20:.1f} MiB" if i["built"] else "-", i["path"] or "-"] for i in images
    ])


@app.command("list")
def list_(as_json: bool = JsonOption) -> None:
    """List images (built ones and those that can be built)."""
    run(as_json, lambda c: c.get("/images"), _rows)


@app.command()
def show(name: str, as_json: bool = JsonOption) -> None:
    """Show one image."""
    run(as_json, lambda c: c.get(f"/images/{name}"), lambda i: _rows([i]))


@app.command()
def delete(name: str, as_json: bool = JsonOption) -> None:
    """Delete a built image."""
    run(as_json, lambda c: c.delete(f"/images/{name}") or {"deleted": name},
        lambda _r: out.print(f"deleted image '{name}'"))


@app.command("boot-disk")
def boot_disk(name: str, volume: str = typer.Argument(..., help="POOL/NAME of the new volume"),
              size: str = typer.Option("128M", help="Disk size."), as_json: bool = JsonOption) -> None:
    """Make a bootable disk volume from an image (syslinux + its kernel and initramfs), for q35 disk boot."""
    run_job(as_json, lambda c: c.post(f"/images/{name}/boot-disk", json={"volume": volume, "size": size}))
