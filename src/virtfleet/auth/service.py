"""Users, passwords, tokens and sessions: the operations behind the auth routes and the middleware."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from virtfleet.auth.throttle import LoginThrottle
from virtfleet.errors import AuthenticationFailed, Conflict, Forbidden, InvalidSpec, NotFound
from virtfleet.model.auth import ApiToken, NewToken, Principal, Role, User
from virtfleet.store.auth_repo import AuthRepo
from virtfleet.store.db import Database

log = logging.getLogger(__name__)

TOKEN_PREFIX = "vf_"  # noqa: S105 - a prefix, not a secret
BOOTSTRAP_USER = "admin"
BOOTSTRAP_TOKEN_NAME = "local-admin"  # noqa: S105 - a token's name, not a secret
SESSION_LIFETIME = timedelta(hours=12)
# Login attempts allowed per user name within the window (a success forgets them); then that name is refused until
# the window passes.
LOGIN_FAILURES_ALLOWED = 5
LOGIN_FAILURE_WINDOW = 60.0
# How long a checked token or session is trusted without asking the database again. Every change made through this
# server forgets them at once, so the window only delays changes made elsewhere (another server on the same store).
CREDENTIAL_CACHE_SECONDS = 5.0
_CACHE_LIMIT = 10_000


def secret_hash(secret: str) -> str:
    # Tokens and session ids are 256 random bits: a fast hash is enough (a KDF is for guessable passwords).
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class AuthService:
    def __init__(self, db: Database) -> None:
        self.repo = AuthRepo(db)
        self._hasher = PasswordHasher()  # argon2id with the library's maintained defaults
        self.login_throttle = LoginThrottle(LOGIN_FAILURES_ALLOWED, LOGIN_FAILURE_WINDOW)
        self._checked: dict[str, tuple[float, Principal | None]] = {}

    # --- bootstrap -----------------------------------------------------------------------------------------------
    def ensure_local_admin(self, path: Path) -> Path:
        """Make `path` (DATA_DIR/admin.token) hold a working admin token (mode 0600): whoever can read the data
        directory owns the host anyway, and the CLI on this host needs no login. A fresh install gets user 'admin' (no
        password: set one with `virtfleet user passwd admin` to log in to the web UI)."""
        self.repo.prune_audit()
        try:
            current = path.read_text().strip()
        except OSError:
            current = ""
        owner = self.repo.user_by_token(secret_hash(current)) if current else None
        if owner is not None and owner.role is Role.ADMIN:
            return path
        try:
            self.repo.get_user(BOOTSTRAP_USER)
        except NotFound:
            self.repo.add_user(BOOTSTRAP_USER, Role.ADMIN, None)
            log.info("created user '%s' (admin); its token is in %s", BOOTSTRAP_USER, path)
        admin = self.repo.get_user(BOOTSTRAP_USER)
        if admin.role is not Role.ADMIN:
            self.repo.update_user(BOOTSTRAP_USER, role=Role.ADMIN)
        for token in self.repo.tokens(BOOTSTRAP_USER):
            if token.name == BOOTSTRAP_TOKEN_NAME:
                self.repo.delete_token(token.id)
        secret = new_secret()
        self.repo.add_token(BOOTSTRAP_USER, BOOTSTRAP_TOKEN_NAME, secret_hash(secret), secret[:8])
        self.forget_checked_credentials()
        partial = path.with_name(f".{path.name}.part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        partial.replace(path)
        return path

    # --- credentials -> principal --------------------------------------------------------------------------------
    def by_token(self, secret: str) -> Principal | None:
        return self._remembered("token", secret_hash(secret))

    def by_session(self, secret: str) -> Principal | None:
        return self._remembered("session", secret_hash(secret))

    def _remembered(self, via: str, hashed: str) -> Principal | None:
        # Every API request checks its credentials: remembering the answer briefly saves a database round trip
        # per request (bench/api.py measures it).
        now = time.monotonic()
        key = f"{via}:{hashed}"
        checked = self._checked.get(key)
        if checked is not None and now - checked[0] < CREDENTIAL_CACHE_SECONDS:
            return checked[1]
        principal = self._token_principal(hashed) if via == "token" else self._session_principal(hashed)
        if len(self._checked) >= _CACHE_LIMIT:  # made-up credentials must not grow memory without bound
            self._checked.clear()
        self._checked[key] = (now, principal)
        return principal

    def _token_principal(self, hashed: str) -> Principal | None:
        user = self.repo.user_by_token(hashed)
        return Principal(name=user.name, role=user.role, via="token") if user is not None else None

    def _session_principal(self, hashed: str) -> Principal | None:
        found = self.repo.session_by_secret(hashed)
        if found is None:
            return None
        user, session_id, csrf = found
        return Principal(name=user.name, role=user.role, via="session", session_id=session_id, csrf_token=csrf)

    def forget_checked_credentials(self) -> None:
        """After any change to users, tokens or sessions: the next request asks the database again."""
        self._checked.clear()

    async def login(self, name: str, password: str) -> tuple[str, Principal]:
        """Check a password; answer the new session's secret and its principal."""
        await self._check_password(name, password)
        user = self.repo.get_user(name)
        secret, csrf = new_secret(), secrets.token_urlsafe(32)
        session_id = self.repo.add_session(name, secret_hash(secret), csrf, SESSION_LIFETIME)
        return secret, Principal(name=user.name, role=user.role, via="session", session_id=session_id,
                                 csrf_token=csrf)

    async def change_own_password(self, principal: Principal, current: str, new: str) -> None:
        """Anyone may change their own password by proving the current one (this ends all their web sessions)."""
        try:
            await self._check_password(principal.name, current)
        except AuthenticationFailed:
            # Not a 401: the caller is authenticated (and a 401 would send the web UI back to its login page).
            raise InvalidSpec("current_password", "that is not your current password") from None
        await self.update_user(principal, principal.name, None, new)

    async def _check_password(self, name: str, password: str) -> None:
        """argon2 off the event loop; five attempts for one name within a minute lock it for the rest of it."""
        stored = self.repo.password_hash(name)
        # The slot is taken before the (threaded) check, with no await in between: parallel guesses count too.
        self.login_throttle.reserve(name, known=stored is not None)
        # Verify against a dummy hash for unknown users too, so the answer's timing does not tell names apart.
        ok = await asyncio.to_thread(self._verify, stored or _dummy_hash(), password)
        if not ok or stored is None:
            raise AuthenticationFailed("wrong user name or password")
        self.login_throttle.succeeded(name)

    def logout(self, principal: Principal) -> None:
        if principal.session_id is not None:
            self.repo.delete_session(principal.session_id)
            self.forget_checked_credentials()

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def hash_password(self, password: str) -> str:
        return self._hasher.hash(password)

    # --- users ---------------------------------------------------------------------------------------------------
    async def add_user(self, name: str, role: Role, password: str | None) -> User:
        hashed = await asyncio.to_thread(self.hash_password, password) if password is not None else None
        return self.repo.add_user(name, role, hashed)

    async def update_user(self, actor: Principal, name: str, role: Role | None, password: str | None) -> User:
        current = self.repo.get_user(name)
        if role is not None and role is not Role.ADMIN and current.role is Role.ADMIN:
            self._keep_an_admin(name, "demote")
        hashed = await asyncio.to_thread(self.hash_password, password) if password is not None else None
        updated = self.repo.update_user(name, role=role, password_hash=hashed)
        self.forget_checked_credentials()
        log.info("user '%s' changed by '%s'", name, actor.name)
        return updated

    def delete_user(self, actor: Principal, name: str) -> None:
        if name == actor.name:
            raise Conflict("you cannot delete yourself; ask another admin")
        if self.repo.get_user(name).role is Role.ADMIN:
            self._keep_an_admin(name, "delete")
        self.repo.delete_user(name)
        self.forget_checked_credentials()

    def _keep_an_admin(self, name: str, verb: str) -> None:
        if self.repo.count_admins() <= 1:
            raise Conflict(f"cannot {verb} '{name}': it is the last admin")

    # --- tokens --------------------------------------------------------------------------------------------------
    def create_token(self, actor: Principal, name: str, user: str | None) -> NewToken:
        owner = user or actor.name
        if owner != actor.name and actor.role is not Role.ADMIN:
            raise Forbidden("only admins create tokens for other users")
        self.repo.get_user(owner)
        if any(token.name == name for token in self.repo.tokens(owner)):
            raise InvalidSpec("name", f"user '{owner}' already has a token named '{name}'")
        secret = new_secret()
        token = self.repo.add_token(owner, name, secret_hash(secret), secret[:8])
        return NewToken(**token.model_dump(), token=secret)

    def list_tokens(self, actor: Principal, user: str | None) -> list[ApiToken]:
        if actor.role is Role.ADMIN:
            return self.repo.tokens(user)
        if user is not None and user != actor.name:
            raise Forbidden("only admins list other users' tokens")
        return self.repo.tokens(actor.name)

    def delete_token(self, actor: Principal, token_id: str) -> None:
        token = self.repo.get_token(token_id)
        if token.user != actor.name and actor.role is not Role.ADMIN:
            raise NotFound("token", token_id)  # other users' tokens are not even visible
        self.repo.delete_token(token_id)
        self.forget_checked_credentials()


def same_secret(given: str | None, expected: str | None) -> bool:
    return given is not None and expected is not None and hmac.compare_digest(given, expected)


@functools.cache
def _dummy_hash() -> str:
    return PasswordHasher().hash("virtfleet: no such user")
