"""The whole API on the fake driver: a real server object, SQLite in a temp dir, no hypervisor."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import free_port
from virtfleet.api.app import create_app
from virtfleet.api.events import UvicornServer
from virtfleet.config import Settings
from virtfleet.drivers.base import DriverConfig
from virtfleet.drivers.fake import FakeHost, fake_host_for
from virtfleet.images.tiny import BuiltImage, write_manifest
from virtfleet.jobs.runner import JobContext
from virtfleet.jobs.storage import volume_key
from virtfleet.model.job import Job
from virtfleet.server import Server


def fake_tiny_builder(dest: Path, *, progress: Callable[[str], None] | None = None) -> BuiltImage:
    """Stands in for the real builder: files with the right names and a real manifest, no kernel inside."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vmlinux").write_bytes(b"\x7fELF fake kernel")
    (dest / "initramfs.cpio").write_bytes(b"070701 fake initramfs")
    if progress:
        progress("wrote fake kernel and initramfs")
    return write_manifest(dest, name="tiny", kernel_release="0.0.0-fake")


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    # Pools may be made beside the data directory (in the test's tmp_path), as an admin's VIRTFLEET_POOL_ROOTS allows.
    fields: dict[str, Any] = {"driver": "fake", "reconcile_interval": 0.1, "pool_roots": (data_dir.parent,)}
    return Settings(data_dir=data_dir, **{**fields, **overrides})


class Api:
    """A TestClient plus helpers that read like the CLI."""

    def __init__(self, client: TestClient, host: FakeHost, settings: Settings, app: FastAPI) -> None:
        self.client = client
        self.app = app
        self.host = host
        self.settings = settings

    @property
    def server(self) -> Server:
        server: Server = self.app.state.server
        return server

    @contextlib.contextmanager
    def holding(self, key: str, label: str) -> Iterator[Job]:
        """Another job holds the lock `key` until the block ends; the holder is yielded, and has succeeded once the
        block is left."""
        release = threading.Event()

        async def hold(_context: JobContext) -> str:
            await asyncio.to_thread(release.wait, 10)
            return "released"

        portal = self.client.portal
        assert portal is not None
        holder = portal.call(lambda: self.server.runner.submit("test.hold", key, label, hold))
        try:
            yield holder
        finally:
            release.set()
        assert self.wait(holder.model_dump(mode="json"))["status"] == "succeeded"

    def holding_volume(self, ref: str) -> contextlib.AbstractContextManager[Job]:
        """Another job holds the volume's lock (by the key any job on it takes: a copy, a snapshot)."""
        return self.holding(volume_key(self.server.storage.volume(ref)), f"volume '{ref}'")

    @contextlib.contextmanager
    def anonymous(self) -> Iterator[TestClient]:
        """The same client without the admin token (cookies, if a test logs in, still go along)."""
        token = self.client.headers.pop("Authorization")
        try:
            yield self.client
        finally:
            self.client.headers["Authorization"] = token

    def headers_for(self, role: str, name: str | None = None) -> dict[str, str]:
        """Credentials of a new user with `role` (an API token), for requests made as someone else than admin."""
        name = name or f"{role}-user"
        response = self.client.post("/api/v1/users", json={"name": name, "role": role})
        assert response.status_code == 201, response.text
        response = self.client.post("/api/v1/tokens", json={"name": "test", "user": name})
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def create(self, name: str = "vm1", **fields: Any) -> dict[str, Any]:
        response = self.client.post("/api/v1/vms", json={"name": name, **fields})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def action(self, name: str, verb: str, **params: Any) -> dict[str, Any]:
        response = self.client.post(f"/api/v1/vms/{name}/{verb}", params=params)
        assert response.status_code == 202, response.text
        return dict(response.json())

    def wait(self, job: dict[str, Any]) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/jobs/{job['id']}", params={"wait": 10})
        assert response.status_code == 200
        done = dict(response.json())
        assert done["status"] in ("succeeded", "failed"), done
        return done

    def run(self, name: str, verb: str, **params: Any) -> dict[str, Any]:
        job = self.wait(self.action(name, verb, **params))
        assert job["status"] == "succeeded", job
        return job

    def vm(self, name: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/vms/{name}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def events(self, name: str) -> list[dict[str, Any]]:
        return list(self.client.get(f"/api/v1/vms/{name}/events").json())

    def wait_state(self, name: str, state: str, timeout: float = 3.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        vm = self.vm(name)
        while vm["state"] != state and time.monotonic() < deadline:
            time.sleep(0.05)
            vm = self.vm(name)
        return vm


def open_api(data_dir: Path, *, build_image: bool = True, **overrides: Any) -> Iterator[Api]:
    """The API on `make_settings(data_dir, **overrides)`, acting as the admin."""
    settings = make_settings(data_dir, **overrides)
    app = create_app(settings, builders={"tiny": fake_tiny_builder})
    with TestClient(app) as client:
        # `serve` writes the local admin token on first start; the tests act as that admin unless they say otherwise.
        token = settings.admin_token_path.read_text().strip()
        client.headers["Authorization"] = f"Bearer {token}"
        if build_image:
            fake_tiny_builder(settings.images_dir / "tiny")
        yield Api(client, fake_host_for(DriverConfig(settings.run_dir)), settings, app)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from open_api(tmp_path / "data")


class LiveServer:
    """uvicorn in a thread on the fake driver, for clients that need a real socket (the CLI, schemathesis, SSE)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        settings = self.settings = make_settings(data_dir)
        fake_tiny_builder(settings.images_dir / "tiny")
        self.app = create_app(settings, builders={"tiny": fake_tiny_builder})
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # As `serve` does: open event streams end first on shutdown, so teardown never waits on one.
        self.server = UvicornServer(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"),
                                    self.app)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def token(self) -> str:
        return self.settings.admin_token_path.read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server_url(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A live server whose local admin token the CLI finds, as it would on the host itself."""
    monkeypatch.setenv("VIRTFLEET_DATA_DIR", str(live_server.data_dir))
    monkeypatch.delenv("VIRTFLEET_TOKEN", raising=False)
    return live_server.url
