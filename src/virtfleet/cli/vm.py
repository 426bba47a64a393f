"""`virtfleet vm ...`"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import typer

from virtfleet.cli.output import JsonOption, err, fail, out, run, run_job, state, table
from virtfleet.client import ApiError, Client

app = typer.Typer(help="Create and run virtual machines.", no_args_is_help=True)

NoWaitOption = typer.Option(False, "--no-wait", help="Return the job at once instead of waiting for it.")


def _spec_from(name: str | None, file: Path | None, flags: dict[str, Any], as_json: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if file is not None:
        import yaml  # only for --file: PyYAML costs a `vm list` a third more

        try:
            loaded = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as error:
            fail(f"{file}: {error}", as_json=as_json)
        if not isinstance(loaded, dict):
            fail(f"{file}: expected a mapping of VM fields", as_json=as_json)
        spec.update(loaded)
    spec.update({k: v for k, v in flags.items() if v is not None})
    if name is not None:
        spec["name"] = name
    if "name" not in spec:
        fail("name: give a VM name (argument or 'name:' in the spec file)", as_json=as_json)
    return spec


DISK_FORMATS = {".qcow2": "qcow2", ".raw": "raw", ".img": "raw", ".vmdk": "vmdk", ".vhdx": "vhdx", ".vhd": "vpc",
                ".vdi": "vdi"}


NEW_DISK_OPTIONS = ("pool", "format", "name")


def _disk(value: str, as_json: bool) -> dict[str, Any]:
    """--disk: a volume POOL/NAME (NAME: the default pool), the absolute path of a volume's file (opened in the
    volume's format, whatever the file is called), or new:SIZE[,pool=POOL][,format=raw][,name=NAME], a blank volume
    the server makes for the VM."""
    if value.startswith("new:"):
        size, *options = value.removeprefix("new:").split(",")
        new: dict[str, Any] = {"size": size}
        for option in options:
            key, sep, setting = option.partition("=")
            if not sep or key not in NEW_DISK_OPTIONS:
                fail(f"disk: unknown option {option!r} (use pool=POOL, format=qcow2|raw, name=NAME)",
                     as_json=as_json, code=2)
            new[key] = setting
        return {"new": new}
    if value.startswith("/"):
        return {"path": value}
    return {"volume": value}


def _nic(value: str, as_json: bool) -> dict[str, Any]:
    network, *options = value.split(",")
    nic: dict[str, Any] = {"network": network}
    for option in options:
        key, sep, setting = option.partition("=")
        if not sep or key not in ("model", "mac"):
            fail(f"nic: unknown option {option!r} (use model=virtio|e1000, mac=MAC)", as_json=as_json, code=2)
        nic[key] = setting
    return nic


def _read_arg(value: str) -> str:
    """A value given literally or as @FILE / an existing file path (user data, ssh keys)."""
    path = Path(value[1:] if value.startswith("@") else value)
    if value.startswith("@") or (len(value) < 4096 and path.is_file()):
        return path.read_text().strip()
    return value


@app.command()
def create(
    name: str | None = typer.Argument(None, help="VM name (or 'name:' in --file)"),
    file: Path | None = typer.Option(None, "--file", "-f", help="A YAML spec with the same fields."),
    image: str | None = typer.Option(None, help="Guest image (default: tiny); 'none' boots from the first disk."),
    cpus: int | None = typer.Option(None, help="Virtual CPUs."),
    memory: str | None = typer.Option(None, help="Memory, e.g. 256M or 2G."),
    machine: str | None = typer.Option(None, help="microvm or q35."),
    accel: str | None = typer.Option(None, help="auto, kvm or tcg."),
    display: str | None = typer.Option(None, help="none, or vnc: a graphical console (q35), opened in the web UI."),
    kernel_args: str | None = typer.Option(None, "--kernel-args", help="Extra kernel command line."),
    disk: list[str] | None = typer.Option(None, "--disk", help="A volume POOL/NAME, a file in a pool, or "
                                          "new:SIZE[,pool=POOL][,format=raw][,name=NAME] to make one (repeat)."),
    from_template: str | None = typer.Option(None, "--from-template",
                                             help="A template VM to clone, or a template volume to clone as the "
                                                  "first disk (linked clone)."),
    full_clone: bool = typer.Option(False, "--full-clone", help="With --from-template: copy instead of link."),
    disk_image: Path | None = typer.Option(None, "--disk-image", exists=True, dir_okay=False,
                                           help="Upload this disk image and boot from it (q35, no kernel image)."),
    disk_format: str | None = typer.Option(None, "--disk-format", help="Format of --disk-image (default: from "
                                                                        "its extension; never guessed from content)."),
    user_data: str | None = typer.Option(None, "--user-data", help="cloud-init user data (a file, or @file)."),
    ssh_key: list[str] | None = typer.Option(None, "--ssh-key", help="An SSH public key or key file (repeat)."),
    hostname: str | None = typer.Option(None, "--hostname", help="cloud-init hostname (default: the VM name)."),
    nic: list[str] | None = typer.Option(None, "--nic", help="NETWORK[,model=e1000][,mac=MAC] (repeat)."),
    forward: list[str] | None = typer.Option(None, "--forward",
                                             help="tcp|udp:HOSTPORT:GUESTPORT on the first (user-mode) NIC."),
    start: bool = typer.Option(False, "--start", help="Start the VM once created."),
    as_json: bool = JsonOption,
) -> None:
    """Define a VM (it stays stopped unless --start)."""
    flags: dict[str, Any] = {"image": image, "cpus": cpus, "memory": memory, "machine": machine,
                             "accel": accel, "kernel_args": kernel_args, "display": display}
    if disk:
        flags["disks"] = [_disk(d, as_json) for d in disk]
    if nic:
        flags["nics"] = [_nic(value, as_json) for value in nic]
    if forward:
        if not nic:
            fail("forward: add a --nic on a user-mode network first", as_json=as_json, code=2)
        flags["nics"][0]["forwards"] = list(forward)
    if user_data is not None or ssh_key or hostname is not None:
        flags["cloud_init"] = {"hostname": hostname, "user_data": _read_arg(user_data) if user_data else None,
                               "ssh_keys": [_read_arg(k) for k in ssh_key or []]}
    spec = _spec_from(name, file, flags, as_json)
    if from_template is not None and disk_image is None and _is_vm_template(from_template):
        body = {"name": spec["name"], "linked": not full_clone, "cpus": cpus, "memory": memory}
        run_job(as_json and not start, lambda c: c.post(f"/vms/{from_template}/clone", json=body),
                quiet=as_json and start)  # with --json --start, stdout carries the start job alone
        if start:
            run_job(as_json, lambda c: c.post(f"/vms/{spec['name']}/start"))
        return
    if spec.get("image") == "none":
        spec["image"] = None
    uploaded = _first_disk(spec, from_template, full_clone, disk_image, disk_format, as_json)

    def create(client: Client) -> dict[str, Any]:
        # One call: the server makes the new disks and records the VM in one job, or leaves nothing.
        if as_json or not sys.stderr.isatty():
            return client.create_vm(spec)
        with err.status(f"creating vm {spec['name']}") as status:
            return client.create_vm(spec, lambda j: status.update(f"{j['kind']}: {j['message']} ({j['progress']}%)"))

    try:
        # With --json --start, stdout carries one document: the start job (which names the VM).
        vm = run(as_json and not start, create,
                 None if as_json else lambda v: out.print(f"created vm '{v['name']}' ({v['id']})"))
    except typer.Exit:
        if uploaded is not None:  # the data came from here, so it was uploaded first: it goes with the refusal
            with state.client() as client, contextlib.suppress(ApiError):
                client.wait_job(client.delete(f"/volumes/{uploaded}"))
        raise
    if start:
        run_job(as_json, lambda c: c.post(f"/vms/{vm['name']}/start"))


def _is_vm_template(name: str) -> bool:
    """--from-template names a template VM, or else a template volume."""
    with state.client() as client:
        try:
            return bool(client.get(f"/vms/{name}").get("template"))
        except ApiError:
            return False


def _first_disk(spec: dict[str, Any], from_template: str | None, full_clone: bool, disk_image: Path | None,
                disk_format: str | None, as_json: bool) -> str | None:
    """Put the VM's first disk in the spec: a clone of a template volume (made by the server with the VM), or an
    uploaded image (uploaded now: returns its volume, to remove if the VM is refused)."""
    if from_template is None and disk_image is None:
        return None
    if from_template is not None and disk_image is not None:
        fail("give --from-template or --disk-image, not both", as_json=as_json, code=2)
    uploaded = None
    if from_template is not None:
        first: dict[str, Any] = {"new": {"clone_of": from_template, "linked": not full_clone}}
    else:
        assert disk_image is not None  # noqa: S101 - the options were checked above
        fmt = disk_format or DISK_FORMATS.get(disk_image.suffix.lower())
        if fmt is None:
            fail(f"disk_format: cannot tell the format of {disk_image.name}; give --disk-format", as_json=as_json)
        uploaded = f"default/{spec['name']}-disk0"
        with state.client() as client:
            try:
                client.upload(f"/pools/default/volumes/{spec['name']}-disk0/data", disk_image, format=fmt)
            except ApiError as error:
                fail(error.message, as_json=as_json, body=error.body)
        first = {"volume": uploaded}
        spec["image"], spec["machine"] = None, "q35"
    if "image" in spec and spec["image"] is None:
        first["boot_index"] = 0
    spec["disks"] = [first, *spec.get("disks", [])]
    return uploaded


def _vm_rows(vms: list[dict[str, Any]]) -> None:
    table(["NAME", "STATE", "CPUS", "MEMORY", "MACHINE", "ACCEL", "IMAGE", "HOST"], [
        [v["name"], v["state"], str(v["spec"]["cpus"]), f"{v['spec']['memory']}M", v["spec"]["machine"],
         v["accel"] or "-", v["spec"]["image"], v["host"]] for v in vms
    ])


@app.command("list")
def list_(as_json: bool = JsonOption) -> None:
    """List VMs."""
    run(as_json, lambda c: c.get("/vms"), _vm_rows)


@app.command()
def show(name: str, events: int = typer.Option(10, help="How many recent events to show."),
         as_json: bool = JsonOption) -> None:
    """Show one VM with its recent events."""

    def fetch(client: Client) -> dict[str, Any]:
        vm: dict[str, Any] = client.get(f"/vms/{name}")
        vm["events"] = client.get(f"/vms/{name}/events", limit=events)
        vm["nics"] = client.get(f"/vms/{name}/nics")  # with each NIC's address from the DHCP leases
        return vm

    def render(vm: dict[str, Any]) -> None:
        spec = vm["spec"]
        for key, value in [("name", vm["name"]), ("id", vm["id"]), ("state", vm["state"]),
                           ("reason", vm["state_reason"]), ("host", vm["host"]), ("accel", vm["accel"] or "-"),
                           ("cpus", spec["cpus"]), ("memory", f"{spec['memory']}M"), ("machine", spec["machine"]),
                           ("display", spec.get("display", "none")), ("image", spec["image"]),
                           ("kernel args", spec["kernel_args"] or "-"),
                           ("disks", ", ".join(d["volume"] or d["path"] for d in spec["disks"]) or "-"),
                           ("nics", ", ".join(f"{n['network']} {n['mac']} {n['ip'] or 'no address'}"
                                              f"{'' if n['link_up'] else ' (link down)'}" for n in vm["nics"]) or "-")]:
            out.print(f"[bold]{key + ':':<13}[/bold]{value}")
        out.print("[bold]events:[/bold]")
        for event in vm["events"]:
            out.print(f"  {event['time'][:19]}  {event['kind']:<16} {event['message']}")

    run(as_json, fetch, render)


def _action(verb: str, help_text: str) -> None:
    def command(name: str, no_wait: bool = NoWaitOption, as_json: bool = JsonOption) -> None:
        run_job(as_json, lambda c: c.post(f"/vms/{name}/{verb}"), wait=not no_wait)

    command.__doc__ = help_text
    app.command(verb)(command)


_action("start", "Start (boot) a stopped VM.")
_action("reboot", "Reset a running VM (hard reboot).")
_action("pause", "Pause a running VM: its vCPUs and clock stop.")
_action("resume", "Resume a paused VM.")


@app.command()
def shutdown(
    name: str,
    timeout: float = typer.Option(60.0, help="Seconds to wait for the guest before forcing it off."),
    no_force: bool = typer.Option(False, "--no-force", help="Fail instead of forcing off after the timeout."),
    no_wait: bool = NoWaitOption,
    as_json: bool = JsonOption,
) -> None:
    """Press the ACPI power button; force the VM off if it is still up after --timeout."""
    run_job(as_json, lambda c: c.post(f"/vms/{name}/shutdown", timeout=timeout, force=not no_force),
            wait=not no_wait)


@app.command()
def stop(
    name: str,
    force: bool = typer.Option(False, "--force", help="Required: power off at once, like pulling the plug."),
    no_wait: bool = NoWaitOption,
    as_json: bool = JsonOption,
) -> None:
    """Power a VM off at once (the guest gets no chance to shut down): needs --force."""
    if not force:
        fail("stop pulls the plug and may lose guest data: add --force, or use `vm shutdown`", as_json=as_json,
             code=2)
    run_job(as_json, lambda c: c.post(f"/vms/{name}/stop"), wait=not no_wait)


@app.command()
def delete(
    name: str,
    force: bool = typer.Option(False, "--force", help="Power the VM off first if it is running."),
    delete_volumes: bool = typer.Option(False, "--delete-volumes", help="Also delete its volumes (not templates)."),
    no_wait: bool = NoWaitOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete a VM (refused while it runs, unless --force). Its volumes are kept unless --delete-volumes."""
    run_job(as_json, lambda c: c.delete(f"/vms/{name}", force=force or None, delete_volumes=delete_volumes or None),
            wait=not no_wait)


@app.command()
def logs(
    name: str,
    max_bytes: int = typer.Option(65536, "--bytes", help="How much of the end of the history to print."),
    as_json: bool = JsonOption,
) -> None:
    """Print the serial console history (kept even while nobody is attached)."""

    def fetch(client: Client) -> Any:
        return client.get(f"/vms/{name}/logs", max_bytes=max_bytes)

    if as_json:
        run(True, lambda c: {"name": name, "log": fetch(c)})
    else:
        run(False, fetch, lambda text: print(text, end=""))


@app.command()
def events(name: str, limit: int = typer.Option(50), as_json: bool = JsonOption) -> None:
    """Print a VM's event log."""
    run(as_json, lambda c: c.get(f"/vms/{name}/events", limit=limit),
        lambda rows: table(["TIME", "EVENT", "MESSAGE"],
                           [[e["time"][:19], e["kind"], e["message"]] for e in rows]))


@app.command()
def console(name: str) -> None:
    """Attach to the serial console (detach with Ctrl-])."""
    from virtfleet.cli.console import attach

    raise typer.Exit(attach(name))


disks = typer.Typer(help="Attach and detach disks (hot-plug on running q35 VMs).", no_args_is_help=True)
app.add_typer(disks, name="disk")


@disks.command("attach")
def disk_attach(
    name: str, volume: str = typer.Argument(..., help="POOL/NAME (or NAME in the default pool)"),
    bus: str = typer.Option("virtio-blk", help="virtio-blk or virtio-scsi (hot-plug: virtio-blk only)."),
    cache: str = typer.Option("writeback", help="writeback, none, writethrough, directsync or unsafe."),
    discard: str = typer.Option("ignore", help="ignore or unmap (pass guest TRIM through)."),
    readonly: bool = typer.Option(False, "--readonly"),
    as_json: bool = JsonOption,
) -> None:
    """Attach a volume to a VM."""
    body = {"volume": volume, "bus": bus, "cache": cache, "discard": discard, "readonly": readonly}
    run_job(as_json, lambda c: c.post(f"/vms/{name}/disks", json=body))


@disks.command("detach")
def disk_detach(name: str, volume: str = typer.Argument(..., help="POOL/NAME, NAME or the disk's path"),
                timeout: float = typer.Option(30.0, help="Seconds the guest gets to release the disk."),
                as_json: bool = JsonOption) -> None:
    """Detach a disk from a VM (its volume is kept)."""
    run_job(as_json, lambda c: c.delete(f"/vms/{name}/disks/{volume.lstrip('/')}", timeout=timeout))


snapshots = typer.Typer(help="Snapshots: disk-only or with memory, kept as a tree.", no_args_is_help=True)
app.add_typer(snapshots, name="snapshot")


@snapshots.command("create")
def snapshot_create(name: str, snapshot: str,
                    memory: bool = typer.Option(False, "--memory", help="Also save RAM and device state."),
                    description: str = typer.Option("", help="A note kept with the snapshot."),
                    as_json: bool = JsonOption) -> None:
    """Take a snapshot of a VM's disks (and memory with --memory)."""
    body = {"name": snapshot, "memory": memory, "description": description}
    run_job(as_json, lambda c: c.post(f"/vms/{name}/snapshots", json=body))


def _tree(items: list[dict[str, Any]]) -> None:
    children: dict[str | None, list[dict[str, Any]]] = {}
    for item in items:
        children.setdefault(item["parent"], []).append(item)

    def show(parent: str | None, depth: int) -> None:
        for item in children.get(parent, []):
            mark = "  <- current" if item["current"] else ""
            out.print(f"{'  ' * depth}{item['name']}  [{item['kind']}, {item['vm_state']}, "
                      f"{item['created_at'][:19]}]{mark}")
            show(item["name"], depth + 1)

    show(None, 0)


@snapshots.command("list")
def snapshot_list(name: str, as_json: bool = JsonOption) -> None:
    """Show a VM's snapshots as a tree."""
    run(as_json, lambda c: c.get(f"/vms/{name}/snapshots"), _tree)


@snapshots.command("revert")
def snapshot_revert(name: str, snapshot: str, as_json: bool = JsonOption) -> None:
    """Go back to a snapshot (disk snapshots: stop the VM first)."""
    run_job(as_json, lambda c: c.post(f"/vms/{name}/snapshots/{snapshot}/revert"))


@snapshots.command("delete")
def snapshot_delete(name: str, snapshot: str, as_json: bool = JsonOption) -> None:
    """Delete a snapshot (its data is merged, not lost)."""
    run_job(as_json, lambda c: c.delete(f"/vms/{name}/snapshots/{snapshot}"))


nics = typer.Typer(help="Add, remove and (un)plug NICs (hot-plug on running q35 VMs).", no_args_is_help=True)
app.add_typer(nics, name="nic")


@nics.command("list")
def nic_list(name: str, as_json: bool = JsonOption) -> None:
    """A VM's NICs with their addresses (from the DHCP leases)."""
    run(as_json, lambda c: c.get(f"/vms/{name}/nics"), lambda items: table(
        ["NETWORK", "MODEL", "MAC", "LINK", "IP", "FORWARDS"],
        [[n["network"], n["model"], n["mac"] or "-", "up" if n["link_up"] else "down", n["ip"] or "-",
          ", ".join(n["forwards"]) or "-"] for n in items]))


@nics.command("add")
def nic_add(name: str, network: str, model: str = typer.Option("virtio", help="virtio or e1000."),
            mac: str | None = typer.Option(None, help="Default: a stable generated address."),
            as_json: bool = JsonOption) -> None:
    """Add a NIC on a network."""
    body = {"network": network, "model": model, **({"mac": mac} if mac else {})}
    run_job(as_json, lambda c: c.post(f"/vms/{name}/nics", json=body))


@nics.command("remove")
def nic_remove(name: str, mac: str, as_json: bool = JsonOption) -> None:
    """Remove a NIC (by MAC)."""
    run_job(as_json, lambda c: c.delete(f"/vms/{name}/nics/{mac}"))


@nics.command("link")
def nic_link(name: str, mac: str, state: str = typer.Argument(..., help="up or down"),
             as_json: bool = JsonOption) -> None:
    """Plug (up) or pull (down) a NIC's virtual cable."""
    if state not in ("up", "down"):
        fail("state: use up or down", as_json=as_json, code=2)
    run_job(as_json, lambda c: c.post(f"/vms/{name}/nics/{mac}/link", json={"up": state == "up"}))


@app.command()
def template(name: str, as_json: bool = JsonOption) -> None:
    """Turn a stopped VM into a template (it never runs again; create VMs from it with --from-template)."""
    run(as_json, lambda c: c.post(f"/vms/{name}/template"),
        lambda vm: out.print(f"vm '{vm['name']}' is now a template"))


@app.command()
def metrics(name: str, minutes: int = typer.Option(10, help="How far back (at most 60)."),
            as_json: bool = JsonOption) -> None:
    """CPU, memory, disk and network use of a VM, one line per sample."""
    run(as_json, lambda c: c.get(f"/vms/{name}/metrics", minutes=minutes), lambda points: table(
        ["TIME", "CPU %", "MEMORY", "DISK READ/s", "DISK WRITE/s", "NET RX/s", "NET TX/s"],
        [[p["time"][11:19], f"{p['cpu_percent']:.1f}", f"{p['memory_bytes'] >> 20}M",
          f"{p['disk_read_bps'] / 1024:.0f}K", f"{p['disk_write_bps'] / 1024:.0f}K",
          f"{p['net_rx_bps'] / 1024:.0f}K", f"{p['net_tx_bps'] / 1024:.0f}K"] for p in points]))
