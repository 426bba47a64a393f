"""Helpers shared by the storage API tests: images, file-tree snapshots, refusals that change nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.functional.conftest import Api

MiB = 1024 * 1024
WRONG_SHA = "0" * 64


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def image_info(path: Path, fmt: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(run("qemu-img", "info", "-U", "-f", fmt, "--output=json", str(path)))
    return info


def make_image(path: Path, fmt: str, size: str, *patterns: tuple[int, int]) -> Path:
    """A new image with `pattern` bytes written at each (offset in MiB, byte) so its content can be compared."""
    run("qemu-img", "create", "-q", "-f", fmt, str(path), size)
    for offset, byte in patterns:
        run("qemu-io", "-f", fmt, "-c", f"write -P {byte} {offset}M 1M", str(path))
    return path


def same_content(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    done = subprocess.run(["qemu-img", "compare", "-U", "-f", a_fmt, "-F", b_fmt, str(a), str(b)],
                          capture_output=True, text=True, check=False)
    assert done.returncode in (0, 1), done.stderr  # 0 identical, 1 different, anything else: an error
    return done.returncode == 0


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def pool_dir(api: Api) -> Path:
    return api.settings.data_dir / "pools" / "default"


def files(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file below `directory` (hidden ones and those in .incoming too): relative path -> (size, mode)."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): (p.stat().st_size, mode_of(p))
            for p in sorted(directory.rglob("*")) if not p.is_dir()}


def assert_staging_empty(directory: Path) -> None:
    staging = directory / ".incoming"
    assert not staging.exists() or list(staging.iterdir()) == [], list(staging.iterdir())


def snapshot(api: Api, *dirs: Path) -> dict[str, Any]:
    pools = api.client.get("/api/v1/pools")
    volumes = api.client.get("/api/v1/volumes")
    vms = api.client.get("/api/v1/vms")
    assert pools.status_code == volumes.status_code == vms.status_code == 200
    return {
        "pools": sorted((p["name"], p["mount_path"]) for p in pools.json()),
        "volumes": [(v["pool"], v["name"], v["format"], v["size"], v["template"], v["base"], v["attached_to"])
                    for v in volumes.json()],
        "vms": sorted((vm["name"], json.dumps(vm["spec"], sort_keys=True)) for vm in vms.json()),
        "files": {str(d): files(d) for d in (pool_dir(api), *dirs)},
    }


@contextlib.contextmanager
def unchanged(api: Api, *dirs: Path) -> Iterator[None]:
    """The block must change nothing: pools, volumes, VMs, and the files in the default pool and `dirs`."""
    before = snapshot(api, *dirs)
    yield
    assert snapshot(api, *dirs) == before


def refused(response: httpx.Response, status: int, *, field: str | None = None, says: str | None = None,
            code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    if field is not None:
        assert error.get("field") == field, error
    if says is not None:
        assert says in error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


def finished(api: Api, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/api/v1/jobs/{response.json()['id']}"
    return api.wait(response.json())


def succeeded(api: Api, response: httpx.Response) -> dict[str, Any]:
    job = finished(api, response)
    assert job["status"] == "succeeded", job
    return job


def failed(api: Api, response: httpx.Response) -> dict[str, Any]:
    job = finished(api, response)
    assert job["status"] == "failed", job
    return job


def create_volume(api: Api, name: str, size: str = "10M", fmt: str = "qcow2", pool: str = "default") -> dict[str, Any]:
    succeeded(api, api.client.post(f"/api/v1/pools/{pool}/volumes", json={"name": name, "size": size, "format": fmt}))
    return details(api, f"{pool}/{name}")


def details(api: Api, ref: str) -> dict[str, Any]:
    response = api.client.get(f"/api/v1/volumes/{ref}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def volume(api: Api, ref: str) -> dict[str, Any]:
    found: dict[str, Any] = details(api, ref)["volume"]
    return found


def mark_template(api: Api, ref: str, template: bool = True) -> dict[str, Any]:
    response = api.client.post(f"/api/v1/volumes/{ref}/template", json={"template": template})
    assert response.status_code == 200, response.text
    marked: dict[str, Any] = response.json()
    assert marked["template"] is template
    return marked


def clone(api: Api, ref: str, name: str, *, linked: bool) -> httpx.Response:
    response: httpx.Response = api.client.post(f"/api/v1/volumes/{ref}/clone", json={"name": name, "linked": linked})
    return response


def delete_volume(api: Api, ref: str) -> httpx.Response:
    response: httpx.Response = api.client.delete(f"/api/v1/volumes/{ref}")
    return response


def upload(api: Api, name: str, data: bytes, **params: str) -> httpx.Response:
    response: httpx.Response = api.client.put(f"/api/v1/pools/default/volumes/{name}/data", content=data, params=params)
    return response
