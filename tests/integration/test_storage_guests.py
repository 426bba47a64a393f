"""Storage seen from real guests: linked clones of a bootable template, cloud-init seeds, backing files refused."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.conftest import READY, Daemon, qemu_pids

pytestmark = pytest.mark.integration


def test_disk_boot_from_a_linked_clone_with_cloud_init(daemon: Daemon) -> None:
    # A bootable disk built from the tiny image, made a template, cloned in well under a second per VM.
    daemon.ok("POST", "/images/tiny/boot-disk", json={"volume": "default/boot", "size": "128M"})
    assert daemon.call("POST", "/volumes/default/boot/template", json={"template": True}).status_code == 200
    clone = daemon.ok("POST", "/volumes/default/boot/clone", json={"name": "web-disk0", "linked": True})
    assert "linked clone" in clone["message"]
    spec = {"name": "web", "machine": "q35", "image": None, "memory": "256M",
            "disks": [{"volume": "default/web-disk0", "boot_index": 0}],
            "cloud_init": {"hostname": "web-from-seed"}}
    assert daemon.call("POST", "/vms", json=spec).status_code == 201
    daemon.ok("POST", "/vms/web/start")
    # SYSLINUX from the disk (no -kernel), then the seed's hostname, then the guest is up under that name.
    text = daemon.wait_log("web", rf"{READY} hostname=web-from-seed", timeout=90)
    assert "SYSLINUX" in text and "virtfleet-cloudinit: hostname=web-from-seed" in text
    # The template is untouched by the guest's writes; the clone is what changed.
    volumes = {v["name"]: v for v in daemon.call("GET", "/volumes").json()}
    assert volumes["web-disk0"]["attached_to"] == "web" and volumes["web-disk0"]["base"] == "default/boot"
    refused = daemon.call("DELETE", "/volumes/default/boot")
    assert refused.status_code == 409 and "web-disk0" in refused.json()["error"]["message"]
    daemon.ok("DELETE", "/vms/web", params={"force": "true", "delete_volumes": "true"})
    assert [v["name"] for v in daemon.call("GET", "/volumes").json()] == ["boot"]
    assert qemu_pids(daemon.data_dir) == []


def test_a_disk_whose_header_names_a_host_file_is_refused_at_start(daemon: Daemon) -> None:
    # Volumes whose headers were changed behind virtfleet's back (a restored backup, a tool run by hand): one names a
    # backing file outside the pools, one an external data file. QEMU is never started on either.
    pool = daemon.data_dir / "pools" / "default"
    for name in ("evil", "split"):
        daemon.ok("POST", "/pools/default/volumes", json={"name": name, "size": "1M"})
    subprocess.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw",
                    str(pool / "evil")], check=True)
    # `create -o data_file=` would create (truncate!) the data file: make the image with a scratch one, then rename
    # it in the header (amend does not open the new name).
    (pool / "split").unlink()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={daemon.data_dir / 'scratch'},data_file_raw=on", str(pool / "split"), "1M"], check=True)
    subprocess.run(["qemu-img", "amend", "-f", "qcow2", "-o", "data_file=/etc/shadow", str(pool / "split")],
                   check=True)
    for vm, volume, says in (("ev", "evil", "outside the storage pools: /etc/shadow"),
                             ("df", "split", "keeps its data in another file (/etc/shadow)")):
        assert daemon.call("POST", "/vms", json={"name": vm, "disks": [{"volume": volume}]}).status_code == 201
        job = daemon.job("POST", f"/vms/{vm}/start")
        assert job["status"] == "failed" and says in job["error"], job
        assert daemon.vm(vm)["state"] == "stopped" and qemu_pids(daemon.data_dir) == []
