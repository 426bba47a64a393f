"""The access policy: which role each API request needs, decided by method and path in one table.

Default deny: a route added later is covered by the last rules (reads need a viewer, changes an operator) without
anyone remembering to protect it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from virtfleet.model.auth import Role

API_PREFIX = "/api/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WEBSOCKET = "WEBSOCKET"  # the method we give WebSocket handshakes

PUBLIC = None  # needs no credentials


@dataclass(frozen=True)
class Rule:
    methods: frozenset[str] | None  # None: any method
    path: re.Pattern[str]
    role: Role | None


def _rule(methods: str, path: str, role: Role | None) -> Rule:
    chosen = None if methods == "*" else frozenset(methods.split())
    return Rule(chosen, re.compile(path), role)


_UNSAFE = "POST PUT PATCH DELETE"
RULES: tuple[Rule, ...] = (
    _rule("GET HEAD", r"/health", PUBLIC),
    _rule("POST", r"/auth/login", PUBLIC),
    _rule("*", r"/auth/.*", Role.VIEWER),
    _rule("*", r"/tokens(/[^/]+)?", Role.VIEWER),  # your own tokens; the routes check ownership
    _rule("*", r"/users(/.*)?", Role.ADMIN),
    _rule("*", r"/audit", Role.ADMIN),
    _rule(_UNSAFE, r"/pools(/[^/]+)?", Role.ADMIN),  # pools and networks shape the host
    _rule(_UNSAFE, r"/networks(/.*)?", Role.ADMIN),
    _rule("GET HEAD", r"/vms/[^/]+/logs", Role.OPERATOR),  # console output is console access
    _rule("GET HEAD", r"/volumes/[^/]+/[^/]+/data", Role.OPERATOR),  # a disk's contents, not its description
    # v2v: the admin decides what is in the import directory (and which host devices may be read); operators import
    # from it and export VMs into the export directory, as they create VMs and volumes.
    _rule("POST", r"/imports", Role.OPERATOR),
    _rule("PUT DELETE", r"/imports/uploads/[^/]+", Role.OPERATOR),
    _rule("POST", r"/vms/[^/]+/export", Role.OPERATOR),
    # host adopt: the list shows other tools' VMs with their host paths; taking them over shapes the host (it turns
    # files into volumes and VMs virtfleet never made into its own), like pools and networks do.
    _rule("GET HEAD", r"/host/foreign-domains", Role.OPERATOR),
    _rule("POST", r"/host/adopt", Role.ADMIN),
    _rule("GET HEAD OPTIONS", r".*", Role.VIEWER),
    _rule("*", r".*", Role.OPERATOR),  # every change, and every WebSocket (they are all consoles)
)


def required_role(method: str, path: str) -> Role | None:
    """The least role `method path` needs; None when it is public. Paths outside the API are the web UI's static
    shell: public, they carry no data."""
    if not path.startswith(API_PREFIX + "/") and path != API_PREFIX:
        return PUBLIC
    api_path = path[len(API_PREFIX):]
    for rule in RULES:
        if (rule.methods is None or method in rule.methods) and rule.path.fullmatch(api_path):
            return rule.role
    return Role.OPERATOR  # unreachable: the last rule matches everything


def is_audited(method: str) -> bool:
    """Changes and console opens are audited; reads are not (they would drown the log)."""
    return method not in SAFE_METHODS
