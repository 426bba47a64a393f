"""The access policy table: which role each request needs."""

from __future__ import annotations

import pytest

from virtfleet.auth.policy import WEBSOCKET, required_role
from virtfleet.model.auth import Role


@pytest.mark.parametrize(("method", "path", "role"), [
    ("GET", "/api/v1/health", None),
    ("POST", "/api/v1/auth/login", None),
    ("GET", "/", None),  # the web UI's static shell
    ("GET", "/ui/app.js", None),
    ("POST", "/api/v1/health", Role.OPERATOR),  # only reading the health check is public
    ("GET", "/api/v1/auth/me", Role.VIEWER),
    ("POST", "/api/v1/auth/logout", Role.VIEWER),
    ("POST", "/api/v1/tokens", Role.VIEWER),
    ("GET", "/api/v1/vms", Role.VIEWER),
    ("GET", "/api/v1/vms/web/metrics", Role.VIEWER),
    ("GET", "/api/v1/vms/web/logs", Role.OPERATOR),
    ("GET", "/api/v1/volumes/default/disk1/data", Role.OPERATOR),
    ("GET", "/api/v1/volumes/default/disk1", Role.VIEWER),
    (WEBSOCKET, "/api/v1/vms/web/console", Role.OPERATOR),
    (WEBSOCKET, "/api/v1/vms/web/vnc", Role.OPERATOR),
    ("POST", "/api/v1/vms/web/start", Role.OPERATOR),
    ("DELETE", "/api/v1/vms/web", Role.OPERATOR),
    ("POST", "/api/v1/pools/default/volumes", Role.OPERATOR),
    ("PUT", "/api/v1/pools/default/volumes/v1/data", Role.OPERATOR),
    ("POST", "/api/v1/vms/web/nics", Role.OPERATOR),
    ("GET", "/api/v1/pools", Role.VIEWER),
    ("POST", "/api/v1/pools", Role.ADMIN),
    ("DELETE", "/api/v1/pools/default", Role.ADMIN),
    ("POST", "/api/v1/networks", Role.ADMIN),
    ("DELETE", "/api/v1/networks/lan", Role.ADMIN),
    ("GET", "/api/v1/networks", Role.VIEWER),
    ("GET", "/api/v1/users", Role.ADMIN),
    ("PATCH", "/api/v1/users/ann", Role.ADMIN),
    ("GET", "/api/v1/audit", Role.ADMIN),
    ("POST", "/api/v1/imports", Role.OPERATOR),  # reads only the admin-set import directory
    ("GET", "/api/v1/imports/0f3c", Role.VIEWER),  # an import's report
    ("POST", "/api/v1/vms/web/export", Role.OPERATOR),  # writes only into the admin-set export directory
    ("GET", "/api/v1/host/foreign-domains", Role.OPERATOR),  # other tools' VMs, with their host paths
    ("POST", "/api/v1/host/adopt", Role.ADMIN),  # turns host files into volumes, foreign VMs into ours
    ("GET", "/api/v1/host", Role.VIEWER),
    ("GET", "/api/v1/anything-new", Role.VIEWER),
    ("POST", "/api/v1/anything-new", Role.OPERATOR),
    ("GET", "/api/v1", Role.VIEWER),
    ("GET", "/api/v1health", None),  # not under the API prefix: the static shell's 404
])
def test_required_role(method: str, path: str, role: Role | None) -> None:
    assert required_role(method, path) == role


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.ADMIN)
