"""State on disk is private to virtfleet's user: the data directory, the database (password hashes), volumes and
seeds; `serve` itself runs with umask 077. Every test here runs with the usual umask 022, so the modes it sees are
virtfleet's doing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.functional.conftest import Api, open_api
from tests.functional.storage_helpers import create_volume, make_image, mode_of, pool_dir, succeeded, upload

pytestmark = pytest.mark.usefixtures("usual_umask")


def database_files(api: Api) -> list[Path]:
    db = api.settings.data_dir / "virtfleet.db"
    return [p for p in (db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal"))) if p.exists()]


def test_the_data_directory_and_the_database_are_private(api: Api) -> None:
    data = api.settings.data_dir
    for directory in (data, data / "pools", pool_dir(api)):
        assert mode_of(directory) == 0o700, directory
    files = database_files(api)
    assert data / "virtfleet.db" in files
    for path in files:
        assert mode_of(path) == 0o600, path


def test_what_an_older_version_left_readable_is_tightened_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for api in open_api(data):
        api.create("vm1", cloud_init={"hostname": "one"})
        api.run("vm1", "start")  # writes a seed
    loose = [data, data / "pools", data / "pools" / "default", data / "run", data / "seeds", data / "images",
             data / "networks"]
    for directory in loose:
        directory.mkdir(exist_ok=True)  # the fake driver makes no run directory, for one
        directory.chmod(0o755)
    (data / "virtfleet.db").chmod(0o644)
    for api in open_api(data):
        for directory in loose:
            assert mode_of(directory) == 0o700, directory
        for path in database_files(api):
            assert mode_of(path) == 0o600, path


def test_volumes_and_seeds_are_private(api: Api, tmp_path: Path) -> None:
    created = Path(create_volume(api, "blank")["volume"]["path"])
    image = make_image(tmp_path / "upload.qcow2", "qcow2", "4M", (0, 0x11))
    uploaded = upload(api, "uploaded", image.read_bytes(), format="qcow2")
    assert uploaded.status_code == 201, uploaded.text
    staging = pool_dir(api) / ".incoming"
    assert mode_of(created) == 0o600 and mode_of(Path(uploaded.json()["path"])) == 0o600
    assert mode_of(staging) == 0o700
    vm = api.create("vm1", cloud_init={"hostname": "one", "user_data": "#cloud-config\npassword: secret\n"})
    api.run("vm1", "start")
    seed = api.settings.data_dir / "seeds" / f"{vm['id']}.iso"
    assert mode_of(seed.parent) == 0o700 and mode_of(seed) == 0o600


def test_a_pool_directory_keeps_the_admins_rights_and_one_we_make_is_private(api: Api, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    made = tmp_path / "made" / "pool"
    for name, path in (("shared", shared), ("made", made)):
        response = api.client.post("/api/v1/pools", json={"name": name, "path": str(path)})
        assert response.status_code == 201, response.text
        succeeded(api, api.client.post(f"/api/v1/pools/{name}/volumes", json={"name": "disk", "size": "1M"}))
        assert mode_of(path / "disk") == 0o600
    assert mode_of(shared) == 0o755
    assert mode_of(made) == 0o700


def _umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line in /proc/PID/status")


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port, data = free_port(), tmp_path / "served"
    env = {**os.environ, "VIRTFLEET_DATA_DIR": str(data), "VIRTFLEET_DRIVER": "fake",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "virtfleet", "serve", "--port", str(port),
                                "--log-level", "warning"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:
        yield process, f"http://127.0.0.1:{port}", data
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_serve_runs_with_a_private_umask(serve_process: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    process, url, data = serve_process
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "serve exited"
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "serve did not come up"
        time.sleep(0.1)
    assert _umask_of(process.pid) == 0o077
    assert mode_of(data) == 0o700
    assert mode_of(data / "virtfleet.db") == 0o600
    assert mode_of(data / "admin.token") == 0o600
