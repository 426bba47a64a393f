"""`virtfleet user ...`, `virtfleet token ...` and `virtfleet audit`."""

from __future__ import annotations

import sys
from typing import Any

import typer

from virtfleet.cli.output import JsonOption, fail, out, run, table

users = typer.Typer(help="Users and roles: viewer (read only), operator (manage VMs), admin (everything).",
                    no_args_is_help=True)
tokens = typer.Typer(help="API tokens for scripts (sent as `Authorization: Bearer ...`, or VIRTFLEET_TOKEN).",
                     no_args_is_help=True)

PasswordStdinOption = typer.Option(False, "--password-stdin", help="Read the password from standard input.")


def _read_password(from_stdin: bool, *, as_json: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        fail("no password: pass --password-stdin and pipe it in, or run in a terminal", as_json=as_json)
    return password


def _user_rows(items: list[dict[str, Any]]) -> None:
    table(["NAME", "ROLE", "PASSWORD", "CREATED"],
          [[u["name"], u["role"], "set" if u["has_password"] else "-", u["created_at"][:19]] for u in items])


@users.command("add")
def add(
    name: str,
    role: str = typer.Option("viewer", help="viewer, operator or admin."),
    password_stdin: bool = PasswordStdinOption,
    no_password: bool = typer.Option(False, "--no-password", help="Token-only user (no web login)."),
    as_json: bool = JsonOption,
) -> None:
    """Add a user who can log in to the web UI (and own API tokens)."""
    body: dict[str, Any] = {"name": name, "role": role}
    if not no_password:
        body["password"] = _read_password(password_stdin, as_json=as_json)
    run(as_json, lambda c: c.post("/users", json=body), lambda u: _user_rows([u]))


@users.command("list")
def list_users(as_json: bool = JsonOption) -> None:
    """List users."""
    run(as_json, lambda c: c.get("/users"), _user_rows)


@users.command("passwd")
def passwd(name: str, password_stdin: bool = PasswordStdinOption, as_json: bool = JsonOption) -> None:
    """Set a user's password (ends their web sessions)."""
    password = _read_password(password_stdin, as_json=as_json)
    run(as_json, lambda c: c.patch(f"/users/{name}", json={"password": password}),
        lambda _u: out.print(f"password of {name} changed"))


@users.command("set-role")
def set_role(name: str, role: str, as_json: bool = JsonOption) -> None:
    """Change a user's role."""
    run(as_json, lambda c: c.patch(f"/users/{name}", json={"role": role}), lambda u: _user_rows([u]))


@users.command("delete")
def delete_user(name: str, as_json: bool = JsonOption) -> None:
    """Delete a user with their tokens and sessions."""
    run(as_json, lambda c: c.delete(f"/users/{name}") or {"deleted": name},
        lambda _r: out.print(f"deleted user {name}"))


def _token_rows(items: list[dict[str, Any]]) -> None:
    table(["ID", "NAME", "USER", "PREFIX", "CREATED", "LAST USED"],
          [[t["id"], t["name"], t["user"], t["prefix"] + "…", t["created_at"][:19], (t["last_used_at"] or "-")[:19]]
           for t in items])


@tokens.command("create")
def create_token(
    name: str,
    user: str | None = typer.Option(None, help="Whose token (admins only; default: yours)."),
    as_json: bool = JsonOption,
) -> None:
    """Create an API token; its secret is printed once."""

    def render(token: dict[str, Any]) -> None:
        out.print(token["token"])
        print(f"token {token['name']} ({token['id']}) for {token['user']}: store it now, it is not shown again",
              file=sys.stderr)

    run(as_json, lambda c: c.post("/tokens", json={"name": name, "user": user}), render)


@tokens.command("list")
def list_tokens(user: str | None = typer.Option(None, help="Only this user's (admins)."),
                as_json: bool = JsonOption) -> None:
    """List API tokens (never their secrets)."""
    run(as_json, lambda c: c.get("/tokens", user=user), _token_rows)


@tokens.command("delete")
def delete_token(token_id: str, as_json: bool = JsonOption) -> None:
    """Revoke an API token."""
    run(as_json, lambda c: c.delete(f"/tokens/{token_id}") or {"deleted": token_id},
        lambda _r: out.print(f"revoked token {token_id}"))


def audit(
    user: str | None = typer.Option(None, help="Only what this user did."),
    limit: int = typer.Option(50, help="How many entries, newest first."),
    as_json: bool = JsonOption,
) -> None:
    """Show the audit log: who changed what, and refused attempts (admins)."""

    def render(items: list[dict[str, Any]]) -> None:
        table(["TIME", "USER", "REQUEST", "STATUS", "DETAIL"],
              [[e["time"][:19], e["user"] or "-", f"{e['method']} {e['path']}", str(e["status"]), e["detail"]]
               for e in items])

    run(as_json, lambda c: c.get("/audit", user=user, limit=limit), render)
