from __future__ import annotations
import json, time, threading
from pathlib import Path
import pytest
from tests.functional.conftest import Api
from tests.functional.test_storage_api import *  # noqa

def test_unchanged_detects(api: Api) -> None:
    with pytest.raises(AssertionError):
        with unchanged(api):
            (pool_dir(api) / ".incoming").mkdir()
            (pool_dir(api) / ".incoming" / "x").write_bytes(b"1")

def test_probe(api: Api, www, tmp_path) -> None:
    root, base = www
    for url in ("ftp://127.0.0.1/image.qcow2", "not a url"):
        r = import_url(api, "ftp", url)
        print(url, r.status_code, r.json())
        if r.status_code == 202: print(api.wait(r.json()))
    r = import_url(api, "s", f"{base}/x", sha256="xyz"); print("badsha", r.status_code, api.wait(r.json()))
    qcow = make_image(tmp_path / "g.qcow2", "qcow2", "4M")
    print("mismatch", upload(api, "g", qcow.read_bytes(), sha256=WRONG_SHA).json())
    # template resize with clones
    create_volume(api, "t", "10M"); run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 9M 1M", str(pool_dir(api) / "t"))
    mark_template(api, "default/t"); succeeded(api, clone(api, "default/t", "c", linked=True))
    r = api.client.post("/api/v1/volumes/default/t/resize", json={"size": "5M", "shrink": True}); print("shrink tmpl", r.status_code, r.json())
    if r.status_code == 202: print(api.wait(r.json())); print(image_info(pool_dir(api)/"c", "qcow2")); print(run("qemu-io","-f","qcow2","-c","read -P 0x5a 9M 1M", str(pool_dir(api)/"c")))
    r = api.client.post("/api/v1/volumes/default/c/resize", json={"size": "20M"}); print("grow clone", r.status_code, api.wait(r.json()))
    # linked clone into other pool
    api.client.post("/api/v1/pools", json={"name": "p2", "path": str(tmp_path / "p2")})
    r = api.client.post("/api/v1/volumes/default/t/clone", json={"name": "x", "linked": True, "pool": "p2"}); print("other pool", r.status_code, r.json())
    # pool at /
    r = api.client.post("/api/v1/pools", json={"name": "root", "path": "/"}); print("root pool", r.status_code, r.json())
    r = api.client.post("/api/v1/pools", json={"name": "nested", "path": str(pool_dir(api) / "sub")}); print("nested pool", r.status_code, r.json())
    r = api.client.post("/api/v1/pools", json={"name": "parent", "path": str(pool_dir(api).parent)}); print("parent pool", r.status_code, r.json())
    # nfs with source
    r = api.client.post("/api/v1/pools", json={"name": "n", "type": "nfs", "source": "127.0.0.1:/x"}); print("nfs", r.status_code, r.text[:300])
    r = api.client.post("/api/v1/pools", json={"name": "l", "type": "lvm", "source": "vg/thin"}); print("lvm", r.status_code, r.text[:300])
    print(api.client.get("/api/v1/pools").status_code)
