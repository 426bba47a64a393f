"""Counting login attempts per user name, so that guessing a password stays slow.

An attempt takes its slot *before* the password is checked: argon2 runs in a thread, so parallel guesses would
otherwise all be checked before the first failure was counted. A successful login forgets the name's slots.

Memory stays bounded without ever dropping an entry that still counts (which would unlock a locked name): accounts
with a password get an entry each (there are as many as the admins made); made-up names share `unknown_limit`
entries, and once those are all in use (someone spraying names) further made-up names share a single entry.
Entries are dropped only once their window has passed.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from virtfleet.errors import TooManyAttempts

# The shared entry of made-up names beyond the table's room (no user name can be empty).
_OVERFLOW = ""


class LoginThrottle:
    def __init__(self, allowed: int, window: float, *, unknown_limit: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed = allowed
        self.window = window
        self.unknown_limit = unknown_limit
        self._clock = clock
        # name -> times of its attempts within the window; oldest last attempt first (entries move to the end).
        self._known: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._unknown: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def reserve(self, name: str, *, known: bool) -> None:
        """Count one attempt for `name`, or raise TooManyAttempts if its window is full. `known`: the name is an
        account with a password (such names always get an entry of their own)."""
        now = self._clock()
        table = self._known if known else self._unknown
        self._expire(table, now)
        key = name
        if not known and name not in table and len(table) >= self.unknown_limit:
            key = _OVERFLOW
        attempts = table.get(key)
        if attempts is None:
            attempts = table[key] = collections.deque()
        while attempts and now - attempts[0] >= self.window:
            attempts.popleft()
        if len(attempts) >= self.allowed:
            wait = self.window - (now - attempts[0])
            raise TooManyAttempts(f"too many failed logins for '{name}': try again in {max(wait, 1):.0f} s")
        attempts.append(now)
        table.move_to_end(key)

    def succeeded(self, name: str) -> None:
        self._known.pop(name, None)
        self._unknown.pop(name, None)

    def tracked(self) -> int:
        """How many entries are kept (for tests and metrics)."""
        return len(self._known) + len(self._unknown)

    def _expire(self, table: collections.OrderedDict[str, collections.deque[float]], now: float) -> None:
        # The front entry's last attempt is the oldest: stop at the first one still inside its window.
        while table:
            attempts = next(iter(table.values()))
            if attempts and now - attempts[-1] < self.window:
                return
            table.popitem(last=False)
