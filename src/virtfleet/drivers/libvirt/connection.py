"""One libvirt connection per driver, reopened when it drops, and libvirt's event loop on a daemon thread.

Every call here blocks (an RPC to libvirtd): callers run them with asyncio.to_thread. Domain events arrive on the
event thread and are handed to `on_event` there; the driver forwards them to its asyncio loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from virtfleet.drivers.libvirt.options import LibvirtOptions
from virtfleet.errors import DriverError

log = logging.getLogger(__name__)
T = TypeVar("T")

_event_loop_lock = threading.Lock()
_event_loop_running = False
# Errors after which the connection itself is suspect: reopen it and try the call once more.
_CONNECTION_ERRORS = frozenset({libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT,
                                libvirt.VIR_ERR_INVALID_CONN})


def _ignore_error(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised and reported instead."""


def ensure_event_loop() -> None:
    """libvirt's default event loop, once per process, before the first connection is opened (the connection
    registers its keepalive and event sockets with it)."""
    global _event_loop_running
    with _event_loop_lock:
        if _event_loop_running:
            return
        libvirt.registerErrorHandler(_ignore_error, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_running = True


DomainEvent = Callable[[libvirt.virDomain], None]


class Connection:
    def __init__(self, options: LibvirtOptions, on_event: DomainEvent) -> None:
        self.options = options
        self._on_event = on_event
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._callbacks: list[int] = []

    def get(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                log.warning("libvirt connection to %s dropped; reopening", self.options.uri)
                self._drop()
            self._conn = self._open()
            return self._conn

    def call(self, action: Callable[[libvirt.virConnect], T]) -> T:
        """Run `action` on the connection; once more on a fresh connection when the first one broke."""
        conn = self.get()
        try:
            return action(conn)
        except libvirt.libvirtError as error:
            if error.get_error_code() not in _CONNECTION_ERRORS or _alive(conn):
                raise
        with self._lock:
            if self._conn is conn:
                self._drop()
        return action(self.get())

    def _auth(self, credentials: list[list[Any]], _opaque: object) -> int:
        for credential in credentials:
            if credential[0] == libvirt.VIR_CRED_AUTHNAME:
                credential[4] = self.options.username
            elif credential[0] == libvirt.VIR_CRED_PASSPHRASE and self.options.password is not None:
                credential[4] = self.options.password.get_secret_value()
            else:
                return -1
        return 0

    def _open(self) -> libvirt.virConnect:
        ensure_event_loop()
        try:
            if self.options.username is not None:
                auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], self._auth, None]
                conn = libvirt.openAuth(self.options.uri, auth, 0)
            else:
                conn = libvirt.open(self.options.uri)
        except libvirt.libvirtError as error:
            raise DriverError(f"cannot connect to libvirt at {self.options.uri}", error.get_error_message()) from None
        if not self.options.local:
            conn.setKeepAlive(5, 3)  # a dead remote daemon is noticed in ~15 s, not at the next TCP timeout
        for event_id in (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT):
            self._callbacks.append(conn.domainEventRegisterAny(None, event_id, self._event, None))
        return conn

    def _event(self, _conn: libvirt.virConnect, domain: libvirt.virDomain, *_details: object) -> None:
        try:
            self._on_event(domain)
        except Exception:  # an exception would be lost in libvirt's C loop; say so here
            log.exception("libvirt domain event handler failed")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        callbacks, self._callbacks = self._callbacks, []
        if conn is None:
            return
        for callback in callbacks:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback)
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False
