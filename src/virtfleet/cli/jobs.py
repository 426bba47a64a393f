"""`virtfleet job ...`"""

from __future__ import annotations

from typing import Any

import typer

from virtfleet.cli.output import JsonOption, out, run, table

app = typer.Typer(help="Jobs: every state change runs as one.", no_args_is_help=True)


def _rows(jobs: list[dict[str, Any]]) -> None:
    table(["ID", "KIND", "STATUS", "PROGRESS", "MESSAGE", "ERROR"], [
        [j["id"], j["kind"], j["status"], f"{j['progress']}%", j["message"], j["error"] or ""] for j in jobs
    ])


@app.command("list")
def list_(target: str | None = typer.Option(None, help="Only jobs on this VM."),
          limit: int = typer.Option(20), as_json: bool = JsonOption) -> None:
    """List recent jobs."""
    run(as_json, lambda c: c.get("/jobs", target=target, limit=limit), _rows)


@app.command()
def show(job_id: str, wait: bool = typer.Option(False, "--wait", help="Wait until it finishes."),
         as_json: bool = JsonOption) -> None:
    """Show one job (optionally waiting for it)."""
    def show_one(job: dict[str, Any]) -> None:
        _rows([job])
        if job["error"]:
            out.print(job["error"])

    run(as_json, lambda c: c.wait_job(c.get(f"/jobs/{job_id}")) if wait else c.get(f"/jobs/{job_id}"), show_one)
