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


def test_a_disk_whose_backing_file_leaves_the_pool_is_refused_at_start(daemon: Daemon) -> None:
    pool = daemon.data_dir / "pools" / "default"
    evil = pool / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(evil),
                    "1M"], check=True)
    assert daemon.call("POST", "/vms", json={"name": "ev", "disks": [{"path": str(evil)}]}).status_code == 201
    job = daemon.job("POST", "/vms/ev/start")
    assert job["status"] == "failed" and "outside the storage pools: /etc/shadow" in job["error"]
    assert daemon.vm("ev")["state"] == "stopped" and qemu_pids(daemon.data_dir) == []
