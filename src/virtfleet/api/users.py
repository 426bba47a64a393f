"""Login sessions, users, API tokens and the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from virtfleet.api.auth import SESSION_COOKIE
from virtfleet.api.errors import status_for
from virtfleet.api.routes import ServerDep
from virtfleet.auth.service import SESSION_LIFETIME
from virtfleet.errors import AuthenticationFailed, TooManyAttempts
from virtfleet.model.auth import (
    MIN_PASSWORD_LENGTH,
    ApiToken,
    AuditEntry,
    NewToken,
    Principal,
    Role,
    TokenIn,
    User,
    UserIn,
    UserPatch,
)

router = APIRouter()


def get_principal(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):  # only on routes the policy leaves public
        raise AuthenticationFailed("authentication required")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=63)
    password: str = Field(min_length=1, max_length=1024)


class Me(BaseModel):
    name: str
    role: Role
    via: str
    csrf_token: str | None = Field(default=None, description="Send it as X-CSRF-Token with changes (sessions).")


def _me(principal: Principal) -> Me:
    return Me(name=principal.name, role=principal.role, via=principal.via, csrf_token=principal.csrf_token)


@router.post("/auth/login", response_model=Me, tags=["auth"])
async def login(body: LoginIn, request: Request, response: Response, server: ServerDep) -> Me:
    client = request.client.host if request.client else ""
    try:
        secret, principal = await server.auth.login(body.username, body.password)
    except (AuthenticationFailed, TooManyAttempts) as error:
        server.auth.repo.audit(body.username, "POST", request.url.path, status_for(error),
                               f"client={client} login failed: {error.message}")
        raise
    server.auth.repo.audit(principal.name, "POST", request.url.path, 200, f"client={client} logged in")
    response.set_cookie(SESSION_COOKIE, secret, max_age=int(SESSION_LIFETIME.total_seconds()), path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return _me(principal)


@router.get("/auth/me", response_model=Me, tags=["auth"])
async def me(principal: PrincipalDep) -> Me:
    return _me(principal)


@router.post("/auth/logout", status_code=204, tags=["auth"])
async def logout(principal: PrincipalDep, server: ServerDep, response: Response) -> Response:
    server.auth.logout(principal)
    response.status_code = 204
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


class PasswordChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)


@router.post("/auth/password", status_code=204, tags=["auth"])
async def change_password(body: PasswordChangeIn, principal: PrincipalDep, server: ServerDep) -> Response:
    """Change your own password; every web session of yours ends (log in again with the new one)."""
    await server.auth.change_own_password(principal, body.current_password, body.new_password)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- users -----------------------------------------------------------------------------------------------------
@router.get("/users", response_model=list[User], tags=["users"])
async def list_users(server: ServerDep) -> list[User]:
    return server.auth.repo.users()


@router.post("/users", response_model=User, status_code=201, tags=["users"])
async def add_user(body: UserIn, server: ServerDep) -> User:
    password = body.password.get_secret_value() if body.password is not None else None
    return await server.auth.add_user(body.name, body.role, password)


@router.get("/users/{name}", response_model=User, tags=["users"])
async def show_user(name: str, server: ServerDep) -> User:
    return server.auth.repo.get_user(name)


@router.patch("/users/{name}", response_model=User, tags=["users"])
async def update_user(name: str, body: UserPatch, principal: PrincipalDep, server: ServerDep) -> User:
    password = body.password.get_secret_value() if body.password is not None else None
    return await server.auth.update_user(principal, name, body.role, password)


@router.delete("/users/{name}", status_code=204, tags=["users"])
async def delete_user(name: str, principal: PrincipalDep, server: ServerDep) -> Response:
    server.auth.delete_user(principal, name)
    return Response(status_code=204)


# --- tokens ----------------------------------------------------------------------------------------------------
@router.get("/tokens", response_model=list[ApiToken], tags=["tokens"])
async def list_tokens(principal: PrincipalDep, server: ServerDep, user: str | None = None) -> list[ApiToken]:
    return server.auth.list_tokens(principal, user)


@router.post("/tokens", response_model=NewToken, status_code=201, tags=["tokens"])
async def create_token(body: TokenIn, principal: PrincipalDep, server: ServerDep) -> NewToken:
    return server.auth.create_token(principal, body.name, body.user)


@router.delete("/tokens/{token_id}", status_code=204, tags=["tokens"])
async def delete_token(token_id: str, principal: PrincipalDep, server: ServerDep) -> Response:
    server.auth.delete_token(principal, token_id)
    return Response(status_code=204)


# --- audit -----------------------------------------------------------------------------------------------------
@router.get("/audit", response_model=list[AuditEntry], tags=["audit"])
async def audit(server: ServerDep, user: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[AuditEntry]:
    return server.auth.repo.audit_entries(user=user, limit=limit)
