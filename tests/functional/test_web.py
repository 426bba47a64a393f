"""The web UI's static files: public (they hold no data), served with the right types and headers, and nothing
outside the web directory or its npm packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.functional.conftest import Api
from virtfleet.api import web


def test_the_app_shell_is_public_and_locked_down(api: Api) -> None:
    with api.anonymous() as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/ui/app.js">' in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        script = client.get("/ui/app.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")  # module scripts need a JS type
        assert client.get("/ui/js/pages/vm.js").status_code == 200
        assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")
        # ...while the data behind it is not.
        assert client.get("/api/v1/vms").status_code == 401


@pytest.mark.parametrize("path", [
    "/ui/../api/app.py", "/ui/%2e%2e/api/app.py", "/ui/js/../../api/web.py", "/ui/node_modules/x/package.json",
    "/ui/package.json", "/ui/.hidden", "/ui/", "/ui/vendor/../../api/app.py", "/ui/vendor/%2e%2e/package.json",
    "/ui/nothing.js",
])
def test_nothing_outside_the_web_files(api: Api, path: str) -> None:
    with api.anonymous() as client:
        response = client.get(path)
    assert response.status_code == 404, (path, response.text[:200])  # (plain ".." the client already folds)


def test_vendor_files_come_from_node_modules(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "@xterm" / "xterm" / "lib"
    package.mkdir(parents=True)
    (package / "xterm.mjs").write_text("export class Terminal {}\n")
    monkeypatch.setattr(web, "VENDOR_ROOT", tmp_path)
    with api.anonymous() as client:
        response = client.get("/ui/vendor/@xterm/xterm/lib/xterm.mjs")
        assert response.status_code == 200
        assert response.text == "export class Terminal {}\n"
        assert response.headers["content-type"].startswith("text/javascript")
        # Not installed: a clear 404 (the console page then says what to install).
        assert client.get("/ui/vendor/@novnc/novnc/core/rfb.js").status_code == 404


def test_resolve_stays_inside_its_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.js").write_text("")
    (tmp_path / "secret").write_text("")
    (tmp_path / "root" / "link.js").symlink_to(tmp_path / "secret")
    assert web.resolve(tmp_path / "root", "a.js") == (tmp_path / "root" / "a.js").resolve()
    assert web.resolve(tmp_path / "root", "../secret") is None
    assert web.resolve(tmp_path / "root", "link.js") is None  # a symlink out of the root is outside too
    assert web.resolve(tmp_path / "root", "") is None
    assert web.resolve(tmp_path / "root", "missing.js") is None
