"""Import and export through the API on the fake driver: plans, jobs, the VM and volumes they make, the report, and
what a failed import leaves (nothing)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import Api, open_api
from tests.v2v_stage import MiB, make_disk, qemu_img, stage


def import_dir(api: Api) -> Path:
    path = api.settings.import_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


def user_network(api: Api, name: str = "lan") -> None:
    response = api.client.post("/api/v1/networks", json={"name": name, "mode": "user"})
    assert response.status_code == 201, response.text


def post_import(api: Api, **body: Any) -> Any:
    return api.client.post("/api/v1/imports", json=body)


def new_volume(api: Api, name: str, size: str, fmt: str = "qcow2") -> None:
    response = api.client.post("/api/v1/pools/default/volumes", json={"name": name, "size": size, "format": fmt})
    assert response.status_code == 202, response.text
    assert api.wait(response.json())["status"] == "succeeded"


def volumes(api: Api) -> list[str]:
    return sorted(f"{v['pool']}/{v['name']}" for v in api.client.get("/api/v1/volumes").json())


def pool_files(api: Api) -> list[str]:
    root = api.settings.default_pool
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def esx_vm(api: Api) -> str:
    root = import_dir(api)
    rel = stage(root, "vmware/libvirt-esx-in-the-wild-9.vmx", as_name="esx/vm.vmx")
    disk = make_disk(root / "esx" / "v2v-windows-kkulkarn.vmdk", "vmdk", 32 * MiB)
    subprocess.run(["qemu-io", "-f", "vmdk", "-c", "write -P 0x61 1M 1M", str(disk)], check=True,
                   capture_output=True)
    return rel


def raw_bytes(image: Path, fmt: str, tmp: Path) -> bytes:
    qemu_img("convert", "-f", fmt, "-O", "raw", str(image), str(tmp / "check.raw"))
    data = (tmp / "check.raw").read_bytes()
    (tmp / "check.raw").unlink()
    return data


def test_a_dry_run_returns_the_plan_and_changes_nothing(api: Api) -> None:
    rel = esx_vm(api)
    before = (volumes(api), pool_files(api))
    response = post_import(api, path=rel, dry_run=True)
    assert response.status_code == 200, response.text
    plan = response.json()
    assert (plan["name"], plan["cpus"], plan["sockets"], plan["cores"], plan["memory_mib"]) == \
        ("v2v-windows-kkulkarn", 16, 4, 4, 16384)
    assert plan["disks"][0]["controller"] == "scsi lsisas1068" and plan["disks"][0]["bus"] == "virtio-scsi"
    assert plan["nics"][0]["mac"] == "00:50:56:80:b3:81" and plan["nics"][0]["network"] is None
    assert any("VM Network" in problem for problem in plan["problems"])
    assert any("CD-ROM" in warning for warning in plan["warnings"])
    assert (volumes(api), pool_files(api)) == before
    assert api.client.get("/api/v1/vms").json() == []


def test_an_unmapped_network_is_refused_before_any_job(api: Api) -> None:
    rel = esx_vm(api)
    response = post_import(api, path=rel)
    assert response.status_code == 422, response.text
    assert "VM Network" in response.json()["error"]["message"]
    assert api.client.get("/api/v1/jobs").json() == []


def test_an_import_the_driver_cannot_run_is_refused_before_any_job(tmp_path: Path) -> None:
    with contextlib.contextmanager(open_api)(tmp_path / "data", fake_capabilities='{"machines": ["microvm"]}') as api:
        user_network(api)
        rel = esx_vm(api)
        before = (volumes(api), pool_files(api))
        response = post_import(api, path=rel, network_map={"VM Network": "lan"}, name="win")
        assert response.status_code == 501 and response.json()["error"]["capability"] == "machines", response.text
        assert api.client.get("/api/v1/jobs").json() == [] and api.client.get("/api/v1/vms").json() == []
        assert (volumes(api), pool_files(api)) == before


def test_import_makes_the_vm_its_volumes_and_a_report(api: Api, tmp_path: Path) -> None:
    user_network(api)
    rel = esx_vm(api)
    response = post_import(api, path=rel, network_map={"VM Network": "lan"}, name="win")
    assert response.status_code == 202, response.text
    job = api.wait(response.json())
    assert job["status"] == "succeeded", job
    assert "not carried over" in job["message"] and "CD-ROM" in job["message"]
    vm = api.vm("win")
    assert (vm["spec"]["cpus"], vm["spec"]["memory"], vm["spec"]["machine"], vm["spec"]["image"]) == \
        (16, 16384, "q35", None)
    assert vm["spec"]["disks"][0]["volume"] == "default/win" and vm["spec"]["disks"][0]["bus"] == "virtio-scsi"
    assert vm["spec"]["nics"][0]["mac"] == "00:50:56:80:b3:81" and vm["spec"]["nics"][0]["network"] == "lan"
    assert vm["spec"]["nics"][0]["model"] == "e1000"  # a Windows guest keeps a NIC it has a driver for
    assert volumes(api) == ["default/win"]
    assert pool_files(api) == ["win"]  # no staging leftovers
    volume = Path(api.client.get("/api/v1/volumes/default/win").json()["volume"]["path"])
    data = raw_bytes(volume, "qcow2", tmp_path)
    assert len(data) == 32 * MiB and data[MiB:2 * MiB] == b"\x61" * MiB and not any(data[2 * MiB:])
    report = api.client.get(f"/api/v1/imports/{job['id']}").json()
    assert report["vm"] == "win" and report["disks"][0]["volume"] == "default/win"
    assert report["warnings"] == report["plan"]["warnings"] and report["warnings"]
    events = [event["kind"] for event in api.events("win")]
    assert "import-warnings" in events


def test_a_failed_import_leaves_no_vm_no_volume_and_no_file(api: Api) -> None:
    user_network(api)
    root = import_dir(api)
    rel = stage(root, "vmware/libvirt-fusion-in-the-wild-1.vmx", as_name="fusion/vm.vmx")
    make_disk(root / "fusion" / "ATTM_VM.vmdk", "vmdk")
    response = post_import(api, path=rel, network_map={"*": "lan"})
    assert response.status_code == 202, response.text
    # Between the plan and the job the disk becomes something qemu cannot read: the job fails mid-way.
    (root / "fusion" / "ATTM_VM.vmdk").write_bytes(b"KDMV" + b"\x01\x00\x00\x00" * 2 + b"\x00" * 500)
    job = api.wait(response.json())
    assert job["status"] == "failed", job
    assert api.client.get("/api/v1/vms").json() == []
    assert volumes(api) == [] and pool_files(api) == []


def test_paths_outside_the_import_directory_are_refused(api: Api, tmp_path: Path) -> None:
    import_dir(api)
    outside = tmp_path / "outside.vmx"
    outside.write_text('memsize = "512"\n')
    for path in (str(outside), "../outside.vmx", "a/../../outside.vmx"):
        response = post_import(api, path=path, dry_run=True)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["field"] == "path"


def test_export_ova_then_import_gives_the_same_vm(api: Api) -> None:
    user_network(api)
    new_volume(api, "d1", "8M")
    new_volume(api, "d2", "4M", "raw")
    api.create("orig", cpus=2, memory="384M", machine="q35", image=None,
               disks=[{"volume": "d1"}, {"volume": "d2"}],
               nics=[{"network": "lan", "mac": "52:54:00:aa:bb:01"}, {"network": "lan", "model": "e1000"}])
    original = api.vm("orig")
    response = api.client.post("/api/v1/vms/orig/export", json={"format": "ova", "dest": "orig"})
    assert response.status_code == 202, response.text
    assert api.wait(response.json())["status"] == "succeeded"
    ova = api.settings.export_dir / "orig.ova"
    with tarfile.open(ova) as tar:
        names = tar.getnames()
    assert names == ["orig.ovf", "orig.mf", "orig-disk1.vmdk", "orig-disk2.vmdk"]
    (import_dir(api) / "orig.ova").symlink_to(ova)  # a link is refused ...
    assert post_import(api, path="orig.ova", dry_run=True).status_code == 422
    (import_dir(api) / "orig.ova").unlink()
    (import_dir(api) / "orig.ova").write_bytes(ova.read_bytes())  # ... a copy is read
    assert api.wait(api.client.delete("/api/v1/vms/orig").json())["status"] == "succeeded"  # its MACs are free
    response = post_import(api, path="orig.ova", network_map={"lan": "lan"})
    assert response.status_code == 202, response.text
    job = api.wait(response.json())
    assert job["status"] == "succeeded", job
    copy = api.vm("orig")
    assert copy["spec"]["cpus"] == original["spec"]["cpus"] == 2
    assert copy["spec"]["memory"] == original["spec"]["memory"] == 384
    assert [nic["mac"] for nic in copy["spec"]["nics"]] == [nic["mac"] for nic in original["spec"]["nics"]]
    sizes = [api.client.get(f"/api/v1/volumes/{d['volume']}").json()["volume"]["size"] for d in copy["spec"]["disks"]]
    assert sizes == [8 * MiB, 4 * MiB]
    assert json.loads(json.dumps(api.client.get(f"/api/v1/imports/{job['id']}").json()))["kind"] == "ova"


@pytest.mark.parametrize("fmt", ["vmx", "xl", "libvirt"])
def test_export_to_vmx_xl_and_libvirt_round_trips(api: Api, fmt: str) -> None:
    user_network(api)
    new_volume(api, "d1", "8M")
    api.create("src", cpus=3, memory="512M", machine="q35", image=None, disks=[{"volume": "d1"}],
               nics=[{"network": "lan", "mac": "52:54:00:aa:bb:02"}])
    assert api.wait(api.client.post("/api/v1/vms/src/export", json={"format": fmt, "dest": "out"}).json())[
        "status"] == "succeeded"
    out = api.settings.export_dir / "out"
    config = {"vmx": "src.vmx", "xl": "src.cfg", "libvirt": "src.xml"}[fmt]
    target = import_dir(api) / "out"
    target.mkdir()
    for item in out.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    assert api.wait(api.client.delete("/api/v1/vms/src").json())["status"] == "succeeded"  # its MAC is free
    response = post_import(api, path=f"out/{config}", name="copy", network_map={"lan": "lan"})
    assert response.status_code == 202, response.text
    assert api.wait(response.json())["status"] == "succeeded"
    copy = api.vm("copy")
    assert (copy["spec"]["cpus"], copy["spec"]["memory"]) == (3, 512)
    assert [nic["mac"] for nic in copy["spec"]["nics"]] == ["52:54:00:aa:bb:02"]
    volume = api.client.get(f"/api/v1/volumes/{copy['spec']['disks'][0]['volume']}").json()["volume"]
    assert volume["size"] == 8 * MiB


def test_viewers_cannot_import_or_export_operators_can(api: Api) -> None:
    rel = esx_vm(api)
    viewer = api.headers_for("viewer")
    operator = api.headers_for("operator")
    assert api.client.post("/api/v1/imports", json={"path": rel, "dry_run": True}, headers=viewer).status_code == 403
    assert api.client.post("/api/v1/vms/x/export", json={"format": "ova", "dest": "x"},
                           headers=viewer).status_code == 403
    assert api.client.post("/api/v1/imports", json={"path": rel, "dry_run": True},
                           headers=operator).status_code == 200


def test_no_host_file_ever_lands_in_a_volume(api: Api, tmp_path: Path) -> None:
    """Plant a recognizable host file, try every way a description can name it, import what can be imported, and
    search every file in the pool for its bytes."""
    marker = b"VIRTFLEET-PLANTED-HOST-FILE-4242"
    secret = tmp_path / "etc" / "shadow"
    secret.parent.mkdir()
    secret.write_bytes(marker * 65536)
    user_network(api)
    root = import_dir(api)
    (root / "h").mkdir()
    (root / "h" / "link-flat.vmdk").symlink_to(secret)
    (root / "h" / "d.vmdk").write_text(f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                                       f'createType="twoGbMaxExtentFlat"\nRW 4096 FLAT "{secret}" 0\n')
    (root / "h" / "l.vmdk").write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                                       'createType="twoGbMaxExtentFlat"\nRW 4096 FLAT "link-flat.vmdk" 0\n')
    (root / "h" / "p.vmdk").write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                                       'createType="twoGbMaxExtentFlat"\nRW 4096 FLAT "../../../etc/shadow" 0\n')
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(root / "h" / "b.qcow2"))
    attempts = {"d.vmdk": "absolute", "l.vmdk": "symbolic link", "p.vmdk": "'..'", str(secret): "does not exist",
                "b.qcow2": "backing file"}
    for index, (disk, reason) in enumerate(attempts.items()):
        fmt = {".vmdk": "vmdk", ".qcow2": "qcow2"}.get(Path(disk).suffix, "raw")
        (root / "h" / f"vm{index}.xml").write_text(
            f"<domain><name>h{index}</name><memory unit='MiB'>64</memory><devices><disk type='file' device='disk'>"
            f"<driver type='{fmt}'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices>"
            "</domain>")
        response = post_import(api, path=f"h/vm{index}.xml")
        assert response.status_code == 422 and reason in response.json()["error"]["message"], response.text
    rel = esx_vm(api)  # and one that imports
    assert api.wait(post_import(api, path=rel, network_map={"*": "lan"}).json())["status"] == "succeeded"
    found = [path for path in api.settings.data_dir.rglob("*")
             if path.is_file() and not path.is_symlink() and marker in path.read_bytes()]
    assert found == []
    assert volumes(api) == ["default/v2v-windows-kkulkarn"]
