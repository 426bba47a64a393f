"""The `virtfleet` command: serve, demo, vm, image, job, host.

Start-up loads only what the command run needs (bench/cli_start.py measures it): the sub-commands' modules load when
one of theirs runs (see cli/lazy.py), the heavy libraries (the server, Rich, the API client) inside the commands that
use them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import ClassVar

import typer

from virtfleet import __version__
from virtfleet.cli.lazy import Lazy, LazyGroup
from virtfleet.cli.output import err, fail, state
from virtfleet.config import DEFAULT_PORT, DEFAULT_URL, Settings, is_loopback
from virtfleet.private_files import PRIVATE_UMASK


class Commands(LazyGroup):
    lazy_commands: ClassVar[dict[str, Lazy]] = {
        "demo": Lazy("virtfleet.cli.demo:demo",
                     "Boot a demo VM from the built-in tiny image and show its console until the guest is up."),
        "audit": Lazy("virtfleet.cli.users:audit",
                      "Show the audit log: who changed what, and refused attempts (admins)."),
        "events": Lazy("virtfleet.cli.events:events",
                       "Follow VM state changes, VM event-log lines and jobs as they happen (Ctrl-C to stop)."),
        "import": Lazy("virtfleet.cli.v2v:import_vm",
                       "Import a VM made elsewhere: its CPUs, memory, disks (converted) and NICs (MACs kept), with "
                       "a report of every setting that is not carried over."),
        "export": Lazy("virtfleet.cli.v2v:export_vm",
                       "Export a stopped VM for VMware, VirtualBox, Xen or libvirt: its disks converted and a "
                       "description."),
    }
    lazy_groups: ClassVar[dict[str, Lazy]] = {
        "vm": Lazy("virtfleet.cli.vm:app", "Create and run virtual machines."),
        "image": Lazy("virtfleet.cli.image:app", "Guest images."),
        "job": Lazy("virtfleet.cli.jobs:app", "Jobs: every state change runs as one."),
        "pool": Lazy("virtfleet.cli.storage:pools", "Storage pools."),
        "volume": Lazy("virtfleet.cli.storage:volumes", "Volumes (disk images) in storage pools."),
        "network": Lazy("virtfleet.cli.network:app",
                        "Networks: nat, isolated, bridge (a host bridge) or user (QEMU user mode)."),
        "user": Lazy("virtfleet.cli.users:users",
                     "Users and roles: viewer (read only), operator (manage VMs), admin (everything)."),
        "token": Lazy("virtfleet.cli.users:tokens",
                      "API tokens for scripts (sent as `Authorization: Bearer ...`, or VIRTFLEET_TOKEN)."),
        "host": Lazy("virtfleet.cli.host:app", "This host: show it, adopt the VMs other tools made on it."),
    }


app = typer.Typer(
    cls=Commands,
    help="virtfleet: run QEMU/KVM virtual machines on one host or a fleet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help and usage errors: Rich formatting would load Rich (more than a whole `virtfleet version` costs)
    # for every --help and every mistyped option.
    rich_markup_mode=None,
)


@app.callback()
def main_options(
    url: str = typer.Option(DEFAULT_URL, "--url", envvar="VIRTFLEET_URL", help="The virtfleet API to talk to."),
    token: str | None = typer.Option(None, "--token", envvar="VIRTFLEET_TOKEN", show_default=False,
                                     help="API token (default: the local admin token of a server on this host)."),
) -> None:
    state.url = url
    state.token = token


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback unless you mean otherwise)."),
    port: int = typer.Option(DEFAULT_PORT, help="TCP port."),
    data_dir: Path | None = typer.Option(None, envvar="VIRTFLEET_DATA_DIR", help="State, images and VM runtime."),
    driver: str | None = typer.Option(None, envvar="VIRTFLEET_DRIVER",
                                      help="qemu (default), fake, or libvirt[:URI] (URI default qemu:///system)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Serve HTTPS with this PEM certificate."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="The certificate's PEM private key."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Run the API server, the web UI and the local agent (state in SQLite under the data directory)."""
    import logging

    import uvicorn

    from virtfleet.api.app import create_app
    from virtfleet.api.events import UvicornServer
    from virtfleet.api.limits import MAX_BODY_BYTES

    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together", as_json=False)
    # Everything the server and its children (QEMU, qemu-img, dnsmasq) create is private: disk images, the database,
    # sockets, logs. The places that create files set modes too; this covers what they do not know about.
    os.umask(PRIVATE_UMASK)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not is_loopback(host) and tls_cert is None:
        err.print(f"[yellow]warning:[/yellow] listening on {host} without TLS: passwords, session cookies and "
                  "API tokens cross the network in clear text; pass --tls-cert and --tls-key")
    try:
        settings = Settings.from_env(data_dir=data_dir, driver=driver, host=host, port=port)
    except ValueError as exc:  # a malformed VIRTFLEET_* variable
        fail(str(exc), as_json=False)
    api = create_app(settings)
    # WebSocket messages (console keystrokes, VNC input) are small: the same cap as request bodies, not 16 MiB.
    config = uvicorn.Config(api, host=host, port=port, log_level=log_level, ws_max_size=MAX_BODY_BYTES,
                            ssl_certfile=str(tls_cert) if tls_cert else None,
                            ssl_keyfile=str(tls_key) if tls_key else None)
    server = UvicornServer(config, api)
    shown = f"[{host}]" if ":" in host else host
    err.print(f"web UI: {'https' if tls_cert else 'http'}://{shown}:{port}/ (a login needs a password: "
              "`virtfleet user passwd admin`); the CLI on this host uses the token in "
              f"{settings.admin_token_path}")
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise typer.Exit(3)  # what uvicorn.run answers when startup fails


def main() -> None:
    app()
