"""Authentication and authorization through the whole API: tokens, sessions with CSRF, roles, the audit log."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import httpx
import pytest
from starlette.websockets import WebSocketDisconnect

from tests.functional.conftest import Api

PASSWORD = "correct horse battery"


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


WEBSOCKETS = ["/api/v1/vms/x/console", "/api/v1/vms/x/vnc"]  # not in the OpenAPI document


def test_every_route_but_health_and_login_refuses_anonymous_requests(api: Api) -> None:
    operations = [(method.upper(), path) for path, item in api.app.openapi()["paths"].items() for method in item]
    assert len(operations) > 50
    public = {("GET", "/api/v1/health"), ("POST", "/api/v1/auth/login")}
    with api.anonymous() as client:
        for method, path in operations:
            response = client.request(method, _concrete(path))
            if (method, path) in public:
                assert response.status_code != 401, path
                continue
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["code"] == "unauthenticated"
            assert response.headers["www-authenticate"] == "Bearer"
        # Paths no route serves are refused the same way: nothing is learnt without credentials.
        assert client.get("/api/v1/no-such-thing").status_code == 401
        assert client.get("/api/v1/metrics").status_code == 401
        for path in WEBSOCKETS:
            with client.websocket_connect(path) as ws, pytest.raises(WebSocketDisconnect) as refused:
                ws.receive_json()
            assert refused.value.code == 4401


def test_a_bad_token_is_refused_even_with_a_good_session(api: Api) -> None:
    api.client.post("/api/v1/users", json={"name": "ann", "role": "admin", "password": PASSWORD})
    with api.anonymous() as client:
        assert client.post("/api/v1/auth/login", json={"username": "ann", "password": PASSWORD}).status_code == 200
        assert client.get("/api/v1/vms").status_code == 200
        refused = client.get("/api/v1/vms", headers={"Authorization": "Bearer vf_not-a-token"})
        assert refused.status_code == 401 and "invalid API token" in refused.json()["error"]["message"]


def test_viewer_reads_but_cannot_change_start_or_open_a_console(api: Api) -> None:
    api.create("web")
    api.run("web", "start")
    viewer = api.headers_for("viewer")
    assert api.client.get("/api/v1/vms", headers=viewer).status_code == 200
    assert api.client.get("/api/v1/vms/web", headers=viewer).json()["state"] == "running"
    assert api.client.get("/api/v1/jobs", headers=viewer).status_code == 200
    for method, path in [("POST", "/api/v1/vms/web/stop"), ("POST", "/api/v1/vms/web/start"),
                         ("DELETE", "/api/v1/vms/web"), ("POST", "/api/v1/vms"), ("GET", "/api/v1/vms/web/logs"),
                         ("GET", "/api/v1/volumes/default/anything/data"),
                         ("GET", "/api/v1/users"), ("GET", "/api/v1/audit"), ("POST", "/api/v1/pools/default/volumes")]:
        response = api.client.request(method, path, headers=viewer, json={})
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"]["code"] == "forbidden"
        assert "viewer" in response.json()["error"]["message"]
    with api.client.websocket_connect("/api/v1/vms/web/console", headers=viewer) as ws, \
            pytest.raises(WebSocketDisconnect) as refused:
        ws.receive_json()
    assert refused.value.code == 4403
    assert api.vm("web")["state"] == "running"  # nothing changed


def test_operator_manages_vms_but_not_users_pools_or_networks(api: Api) -> None:
    operator = api.headers_for("operator")
    created = api.client.post("/api/v1/vms", json={"name": "op"}, headers=operator)
    assert created.status_code == 201
    started = api.client.post("/api/v1/vms/op/start", headers=operator)
    assert started.status_code == 202 and api.wait(started.json())["status"] == "succeeded"
    with api.client.websocket_connect("/api/v1/vms/op/console", headers=operator) as ws:
        assert ws.receive_json() == {"type": "attached", "vm": "op"}
    assert api.client.get("/api/v1/vms/op/logs", headers=operator).status_code == 200
    for method, path, body in [
        ("POST", "/api/v1/users", {"name": "eve", "role": "admin"}),
        ("PATCH", "/api/v1/users/operator-user", {"role": "admin"}),
        ("DELETE", "/api/v1/users/admin", None),
        ("POST", "/api/v1/networks", {"name": "n1", "mode": "user"}),
        ("POST", "/api/v1/pools", {"name": "p1", "type": "dir", "path": "/tmp/p1"}),  # noqa: S108 - refused, never made
        ("POST", "/api/v1/tokens", {"name": "t", "user": "admin"}),
        ("GET", "/api/v1/audit", None),
    ]:
        response = api.client.request(method, path, json=body, headers=operator)
        assert response.status_code == 403, (method, path, response.text)
    assert [u["role"] for u in api.client.get("/api/v1/users").json() if u["name"] == "operator-user"] == ["operator"]


def test_web_session_needs_the_csrf_header_for_changes(api: Api) -> None:
    api.client.post("/api/v1/users", json={"name": "olga", "role": "operator", "password": PASSWORD})
    with api.anonymous() as client:
        login = client.post("/api/v1/auth/login", json={"username": "olga", "password": PASSWORD})
        assert login.status_code == 200
        cookie = login.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        csrf = login.json()["csrf_token"]
        me = client.get("/api/v1/auth/me").json()
        assert me == {"name": "olga", "role": "operator", "via": "session", "csrf_token": csrf}
        refused = client.post("/api/v1/vms", json={"name": "s1"})
        assert refused.status_code == 403 and "x-csrf-token" in refused.json()["error"]["message"]
        wrong = client.post("/api/v1/vms", json={"name": "s1"}, headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        assert client.get("/api/v1/vms").json() == []  # nothing was created
        assert client.post("/api/v1/vms", json={"name": "s1"}, headers={"X-CSRF-Token": csrf}).status_code == 201
        # A WebSocket opened from another site's page carries the cookie too: refused by its Origin.
        with client.websocket_connect("/api/v1/vms/s1/console", headers={"Origin": "http://evil.example"}) as ws, \
                pytest.raises(WebSocketDisconnect) as refused_ws:
            ws.receive_json()
        assert refused_ws.value.code == 4403
        assert client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        assert client.get("/api/v1/vms").status_code == 401


def test_wrong_passwords_and_passwordless_users_cannot_log_in(api: Api) -> None:
    api.client.post("/api/v1/users", json={"name": "pat", "role": "viewer", "password": PASSWORD})
    with api.anonymous() as client:
        for body in ({"username": "pat", "password": "wrong password"}, {"username": "nobody", "password": PASSWORD},
                     {"username": "admin", "password": ""}, {"username": "admin", "password": "anything"}):
            response = client.post("/api/v1/auth/login", json=body)
            assert response.status_code in (401, 422), body
            assert "set-cookie" not in response.headers
    audit = api.client.get("/api/v1/audit").json()
    assert any(e["user"] == "pat" and e["status"] == 401 and "login failed" in e["detail"] for e in audit)


def test_passwords_and_tokens_are_stored_hashed(api: Api) -> None:
    api.client.post("/api/v1/users", json={"name": "hal", "role": "viewer", "password": PASSWORD})
    secret = api.client.post("/api/v1/tokens", json={"name": "ci", "user": "hal"}).json()["token"]
    with sqlite3.connect(api.settings.data_dir / "virtfleet.db") as db:
        (stored,) = db.execute("SELECT password_hash FROM users WHERE name = 'hal'").fetchone()
        hashes = [row[0] for row in db.execute("SELECT secret_hash FROM api_tokens")]
        dump = "\n".join(db.iterdump())
    assert stored.startswith("$argon2id$") and PASSWORD not in dump
    assert secret not in dump and len(hashes) == 2 and all(len(h) == 64 for h in hashes)


def test_tokens_are_listed_without_secrets_and_revocable(api: Api) -> None:
    headers = api.headers_for("viewer", "vic")
    listed = api.client.get("/api/v1/tokens", headers=headers).json()
    assert [(t["name"], t["user"]) for t in listed] == [("test", "vic")]
    assert "token" not in listed[0] and listed[0]["prefix"].startswith("vf_")
    assert listed[0]["last_used_at"] is not None
    # A viewer makes its own tokens, but sees and deletes nobody else's.
    own = api.client.post("/api/v1/tokens", json={"name": "script"}, headers=headers).json()
    admin_token = next(t for t in api.client.get("/api/v1/tokens").json() if t["user"] == "admin")
    assert api.client.delete(f"/api/v1/tokens/{admin_token['id']}", headers=headers).status_code == 404
    assert api.client.get("/api/v1/tokens", params={"user": "admin"}, headers=headers).status_code == 403
    assert api.client.delete(f"/api/v1/tokens/{own['id']}", headers=headers).status_code == 204
    assert api.client.get("/api/v1/vms", headers={"Authorization": f"Bearer {own['token']}"}).status_code == 401


def test_user_management_keeps_an_admin_and_checks_input(api: Api) -> None:
    bad = api.client.post("/api/v1/users", json={"name": "../root", "role": "viewer"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "name"
    short = api.client.post("/api/v1/users", json={"name": "sam", "password": "short"})
    assert short.status_code == 422 and short.json()["error"]["field"] == "password"
    role = api.client.post("/api/v1/users", json={"name": "sam", "role": "root"})
    assert role.status_code == 422 and role.json()["error"]["field"] == "role"
    assert [u["name"] for u in api.client.get("/api/v1/users").json()] == ["admin"]
    assert api.client.delete("/api/v1/users/admin").status_code == 409  # yourself
    assert api.client.post("/api/v1/users", json={"name": "root2", "role": "admin"}).status_code == 201
    assert api.client.post("/api/v1/users", json={"name": "root2"}).status_code == 409
    assert api.client.patch("/api/v1/users/root2", json={"role": "viewer"}).status_code == 200
    last = api.client.patch("/api/v1/users/admin", json={"role": "operator"})
    assert last.status_code == 409 and "last admin" in last.json()["error"]["message"]
    assert api.client.delete("/api/v1/users/root2").status_code == 204


def test_a_new_password_ends_existing_sessions(api: Api) -> None:
    api.client.post("/api/v1/users", json={"name": "rita", "role": "viewer", "password": PASSWORD})
    with api.anonymous() as client:
        assert client.post("/api/v1/auth/login", json={"username": "rita", "password": PASSWORD}).status_code == 200
        assert client.get("/api/v1/auth/me").status_code == 200
    patched = api.client.patch("/api/v1/users/rita", json={"password": "another secret"})
    assert patched.status_code == 200
    with api.anonymous() as client:
        assert client.get("/api/v1/auth/me").status_code == 401


def test_the_audit_log_records_who_did_what(api: Api) -> None:
    operator = api.headers_for("operator", "opal")
    viewer = api.headers_for("viewer", "vera")
    api.client.post("/api/v1/vms", json={"name": "audited"}, headers=operator)
    api.client.post("/api/v1/vms/audited/start", headers=operator)
    api.client.post("/api/v1/vms/audited/stop", headers=viewer)
    api.client.get("/api/v1/vms", headers=viewer)  # reads are not audited
    entries = api.client.get("/api/v1/audit", params={"limit": 1000}).json()
    mine = [(e["user"], e["method"], e["path"], e["status"]) for e in entries if "audited" in e["path"]]
    assert mine == [
        ("vera", "POST", "/api/v1/vms/audited/stop", 403),
        ("opal", "POST", "/api/v1/vms/audited/start", 202),
    ]
    start = next(e for e in entries if e["path"] == "/api/v1/vms/audited/start")
    assert "location=/api/v1/jobs/" in start["detail"]
    created = next(e for e in entries if e["path"] == "/api/v1/vms" and e["user"] == "opal")
    assert created["status"] == 201
    assert not any(e["method"] == "GET" for e in entries)
    only_vera = api.client.get("/api/v1/audit", params={"user": "vera"}).json()
    assert {e["user"] for e in only_vera} == {"vera"}


def test_the_local_admin_token_survives_restarts_and_is_private(api: Api) -> None:
    path = api.settings.data_dir / "admin.token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == api.client.headers["Authorization"].removeprefix("Bearer ")


def test_repeated_wrong_passwords_lock_the_name_for_a_while(api: Api) -> None:
    api.client.post("/api/v1/users", json={"name": "bob", "role": "viewer", "password": PASSWORD})
    api.client.post("/api/v1/users", json={"name": "amy", "role": "viewer", "password": PASSWORD})
    with api.anonymous() as client:
        for _ in range(5):
            assert client.post("/api/v1/auth/login", json={"username": "bob", "password": "guess"}).status_code == 401
        locked = client.post("/api/v1/auth/login", json={"username": "bob", "password": PASSWORD})
        assert locked.status_code == 429 and "try again in" in locked.json()["error"]["message"]
        # Other names are not affected.
        assert client.post("/api/v1/auth/login", json={"username": "amy", "password": PASSWORD}).status_code == 200


def test_parallel_guesses_are_counted_before_any_is_checked(api: Api) -> None:
    """40 guesses at once, the right one last: only the first five are checked, the rest are refused unchecked."""
    api.client.post("/api/v1/users", json={"name": "bob", "role": "viewer", "password": PASSWORD})
    guesses = [f"guess {n}" for n in range(39)] + [PASSWORD]

    async def guess_all() -> list[int]:
        # In the app's own event loop (the TestClient's), as concurrent requests: argon2 runs in threads meanwhile.
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answers = await asyncio.gather(*(client.post("/api/v1/auth/login",
                                                         json={"username": "bob", "password": guess})
                                             for guess in guesses))
        return [answer.status_code for answer in answers]

    assert api.client.portal is not None
    statuses = api.client.portal.call(guess_all)
    assert sorted(statuses) == [401] * 5 + [429] * 35, statuses
    with api.anonymous() as client:
        assert client.post("/api/v1/auth/login", json={"username": "bob", "password": PASSWORD}).status_code == 429


def test_users_change_their_own_password_by_proving_the_current_one(api: Api) -> None:
    api.client.post("/api/v1/users", json={"name": "val", "role": "viewer", "password": PASSWORD})
    with api.anonymous() as client:
        csrf = client.post("/api/v1/auth/login", json={"username": "val", "password": PASSWORD}).json()["csrf_token"]
        headers = {"X-CSRF-Token": csrf}
        wrong = client.post("/api/v1/auth/password", headers=headers,
                            json={"current_password": "not it", "new_password": "a new passphrase"})
        assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "current_password"
        short = client.post("/api/v1/auth/password", headers=headers,
                            json={"current_password": PASSWORD, "new_password": "short"})
        assert short.status_code == 422 and short.json()["error"]["field"] == "new_password"
        changed = client.post("/api/v1/auth/password", headers=headers,
                              json={"current_password": PASSWORD, "new_password": "a new passphrase"})
        assert changed.status_code == 204
        assert client.get("/api/v1/auth/me").status_code == 401  # the session ended with the old password
        assert client.post("/api/v1/auth/login", json={"username": "val", "password": PASSWORD}).status_code == 401
        again = client.post("/api/v1/auth/login", json={"username": "val", "password": "a new passphrase"})
        assert again.status_code == 200 and again.json()["role"] == "viewer"


def test_the_audit_log_keeps_a_year(api: Api) -> None:
    repo = api.app.state.server.auth.repo
    repo.audit("old", "POST", "/api/v1/vms", 201)
    with sqlite3.connect(api.settings.data_dir / "virtfleet.db") as db:
        db.execute("UPDATE audit_log SET time = '2020-01-01 00:00:00.000000' WHERE user = 'old'")
    repo.audit("new", "POST", "/api/v1/vms", 201)
    assert repo.prune_audit() == 1
    users = {e["user"] for e in api.client.get("/api/v1/audit", params={"limit": 1000}).json()}
    assert "new" in users and "old" not in users
