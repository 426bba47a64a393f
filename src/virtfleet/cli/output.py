"""How the CLI talks to people and scripts: Rich tables, or JSON with --json; one-line errors, non-zero exit."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from virtfleet.client import ApiError, Client, default_token
from virtfleet.config import DEFAULT_URL

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class _State:
    url = DEFAULT_URL
    token: str | None = None  # --token / $VIRTFLEET_TOKEN; else the local admin token (see default_token)

    def credentials(self) -> str | None:
        return self.token or default_token(self.url)

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.url, timeout=timeout, token=self.credentials())


state = _State()

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")


def fail(message: str, *, as_json: bool, body: dict[str, Any] | None = None, code: int = 1) -> NoReturn:
    if as_json:
        print(json.dumps(body or {"error": {"code": "error", "message": message}}, indent=2))
    else:
        err.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def run(as_json: bool, action: Callable[[Client], Any], render: Callable[[Any], None] | None = None) -> Any:
    """Call the API; print the result as JSON or through `render`; turn errors into one line and exit 1."""
    client = state.client()
    try:
        result = action(client)
    except ApiError as error:
        fail(error.message, as_json=as_json, body=error.body)
    finally:
        client.close()
    if as_json:
        print_json(result)
    elif render is not None:
        render(result)
    return result


def run_job(as_json: bool, submit: Callable[[Client], dict[str, Any]], wait: bool = True,
            quiet: bool = False) -> dict[str, Any]:
    """Submit a job and (unless --no-wait) follow it to the end with a progress line; exit 1 if it failed."""

    def action(client: Client) -> dict[str, Any]:
        job = submit(client)
        if not wait:
            return job
        if as_json or not sys.stderr.isatty():
            return client.wait_job(job)
        with err.status(f"{job['kind']}: {job['message']}") as status:
            return client.wait_job(job, lambda j: status.update(f"{j['kind']}: {j['message']} ({j['progress']}%)"))

    job: dict[str, Any] = run(as_json and not quiet, action)
    if job["status"] == "failed":
        if as_json and not quiet:
            _exit_failed()
        fail(job.get("error") or "job failed", as_json=as_json, code=1)
    if not as_json and not quiet:
        if wait:
            out.print(job["message"])
        else:
            out.print(f"job {job['id']} {job['status']}")
    return job


def _exit_failed() -> NoReturn:
    raise typer.Exit(1)


def table(columns: list[str], rows: list[list[str]]) -> None:
    grid = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        grid.add_row(*row)
    out.print(grid)
