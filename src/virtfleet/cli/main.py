"""The `virtfleet` command: serve, demo, vm, image, job, host."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import typer

from virtfleet import __version__
from virtfleet.cli import image, jobs, network, storage, users, v2v, vm
from virtfleet.cli.demo import demo
from virtfleet.cli.events import events
from virtfleet.cli.output import JsonOption, err, fail, out, run, state
from virtfleet.config import DEFAULT_PORT, DEFAULT_URL, Settings, is_loopback
from virtfleet.private_files import PRIVATE_UMASK

app = typer.Typer(
    help="virtfleet: run QEMU/KVM virtual machines on one host or a fleet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(vm.app, name="vm")
app.add_typer(image.app, name="image")
app.add_typer(jobs.app, name="job")
app.add_typer(storage.pools, name="pool")
app.add_typer(storage.volumes, name="volume")
app.add_typer(network.app, name="network")
app.add_typer(users.users, name="user")
app.add_typer(users.tokens, name="token")
app.command()(demo)
app.command()(users.audit)
app.command()(events)
app.command("import")(v2v.import_vm)
app.command("export")(v2v.export_vm)


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
    out.print(__version__)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback unless you mean otherwise)."),
    port: int = typer.Option(DEFAULT_PORT, help="TCP port."),
    data_dir: Path | None = typer.Option(None, envvar="VIRTFLEET_DATA_DIR", help="State, images and VM runtime."),
    driver: str | None = typer.Option(None, envvar="VIRTFLEET_DRIVER", help="qemu (default) or fake."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Serve HTTPS with this PEM certificate."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="The certificate's PEM private key."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Run the API server, the web UI and the local agent (state in SQLite under the data directory)."""
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


@app.command("host")
def host_info(as_json: bool = JsonOption) -> None:
    """Show this host: CPUs, memory, hypervisor, whether KVM is usable, and what its driver can do."""

    def render(info: dict[str, Any]) -> None:
        for key in ("hostname", "cpus", "memory_mib", "driver", "hypervisor", "kvm_usable", "kvm_reason"):
            out.print(f"[bold]{key + ':':<14}[/bold]{info[key]}")
        capabilities: dict[str, Any] = info["capabilities"]
        flags = {name: value for name, value in capabilities.items() if isinstance(value, bool)}
        rows = {"capabilities:": [name for name, able in flags.items() if able],
                "lacks:": [name for name, able in flags.items() if not able],
                "machines:": capabilities["machines"]}
        for label, names in rows.items():
            out.print(f"[bold]{label:<14}[/bold]{', '.join(names) or '-'}", highlight=False)

    run(as_json, lambda c: c.get("/host"), render)


def main() -> None:
    app()
