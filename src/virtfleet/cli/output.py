"""How the CLI talks to people and scripts: Rich tables, or JSON with --json; one-line errors, non-zero exit.

Rich and the API client are imported when first used: either costs more than a whole `virtfleet version`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from virtfleet.config import DEFAULT_URL

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

    from virtfleet.client import Client


class LazyConsole:
    """A Rich console made on first use (commands that print JSON or nothing never load Rich)."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False)
        return self._console

    def print(self, *objects: Any, **options: Any) -> None:
        self.console.print(*objects, **options)

    def status(self, message: str) -> Status:
        return self.console.status(message)


out = LazyConsole()
err = LazyConsole(stderr=True)


class _State:
    url = DEFAULT_URL
    token: str | None = None  # --token / $VIRTFLEET_TOKEN; else the local admin token (see default_token)

    def credentials(self) -> str | None:
        from virtfleet.client import default_token

        return self.token or default_token(self.url)

    def client(self, timeout: float = 30.0) -> Client:
        from virtfleet.client import Client

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
    from virtfleet.client import ApiError

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
    from rich.table import Table

    grid = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        grid.add_row(*row)
    out.print(grid)
