"""Login attempt counting: a locked name stays locked whatever else is tried, and memory stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtfleet.auth.service import LOGIN_FAILURES_ALLOWED, AuthService
from virtfleet.auth.throttle import LoginThrottle
from virtfleet.errors import AuthenticationFailed, TooManyAttempts
from virtfleet.model.auth import Role
from virtfleet.store.db import Database

PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_spraying_made_up_names_does_not_unlock_a_locked_name(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database.sqlite(tmp_path / "virtfleet.db")
    db.migrate()
    auth = AuthService(db)
    await auth.add_user("bob", Role.VIEWER, PASSWORD)
    for _ in range(LOGIN_FAILURES_ALLOWED):
        with pytest.raises(AuthenticationFailed):
            await auth.login("bob", "guess")
    # The counting is under test, not the store or argon2: made-up names have no password, and the check of a
    # guess answers "wrong" at once (a real one takes ~50 ms).
    monkeypatch.setattr(auth.repo, "password_hash", lambda name: None)
    monkeypatch.setattr(auth, "_verify", lambda stored, password: False)
    for n in range(10_001):  # one more than the old table held before it forgot everything
        with pytest.raises((AuthenticationFailed, TooManyAttempts)):
            await auth.login(f"nobody-{n}", "guess")
    monkeypatch.undo()
    with pytest.raises(TooManyAttempts, match="'bob'"):
        await auth.login("bob", PASSWORD)
    assert auth.login_throttle.tracked() <= 10_000 + 2  # the made-up names' room, their shared entry, bob
    db.close()


def test_a_window_full_of_attempts_locks_the_name_until_it_passes() -> None:
    clock = Clock()
    throttle = LoginThrottle(3, 60, clock=clock)
    for _ in range(3):
        throttle.reserve("bob", known=True)
    with pytest.raises(TooManyAttempts, match="try again in 60 s"):
        throttle.reserve("bob", known=True)
    throttle.reserve("amy", known=True)  # other names are not affected
    clock.now += 59
    with pytest.raises(TooManyAttempts, match="try again in 1 s"):
        throttle.reserve("bob", known=True)
    clock.now += 1
    throttle.reserve("bob", known=True)


def test_a_success_forgets_the_names_attempts() -> None:
    throttle = LoginThrottle(3, 60, clock=Clock())
    for _ in range(2):
        throttle.reserve("bob", known=True)
    throttle.succeeded("bob")
    for _ in range(3):
        throttle.reserve("bob", known=True)
    assert throttle.tracked() == 1


def test_made_up_names_beyond_the_room_share_one_entry_and_accounts_keep_their_own() -> None:
    clock = Clock()
    throttle = LoginThrottle(2, 60, unknown_limit=10, clock=clock)
    for _ in range(2):
        throttle.reserve("bob", known=True)
    for n in range(10):
        throttle.reserve(f"nobody-{n}", known=False)
    throttle.reserve("nobody-10", known=False)
    throttle.reserve("nobody-11", known=False)
    with pytest.raises(TooManyAttempts):
        throttle.reserve("nobody-12", known=False)  # the shared entry is full
    throttle.reserve("nobody-0", known=False)  # a name with an entry of its own keeps it
    throttle.reserve("amy", known=True)  # accounts are never squeezed into the shared entry
    with pytest.raises(TooManyAttempts):
        throttle.reserve("bob", known=True)
    assert throttle.tracked() == 10 + 1 + 2
    clock.now += 60  # windows passed: the entries go as new attempts come
    throttle.reserve("someone", known=False)
    throttle.reserve("carl", known=True)
    assert throttle.tracked() == 2
