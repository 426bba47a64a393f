"""`virtfleet import` and `virtfleet export` against a live server on the fake driver."""

from __future__ import annotations

import json

from tests.functional.conftest import LiveServer
from tests.functional.test_cli import cli, cli_json
from tests.v2v_stage import make_disk, stage


def test_import_dry_run_then_import_then_export(server_url: str, live_server: LiveServer) -> None:
    root = live_server.settings.import_dir
    root.mkdir(parents=True, exist_ok=True)
    rel = stage(root, "vmware/libvirt-fusion-in-the-wild-1.vmx", as_name="fusion/vm.vmx")
    make_disk(root / "fusion" / "ATTM_VM.vmdk", "vmdk")
    assert cli_json(server_url, "network", "create", "lan", "--mode", "user")["name"] == "lan"

    code, out, err = cli(server_url, "import", rel, "--dry-run")
    assert code == 0, err
    assert "ATTM_VM" in out and "unmapped" in out and "sound card" in out and "--network-map" in out
    plan = cli_json(server_url, "import", rel, "--dry-run", "--network-map", "VMnet0=lan")
    assert plan["problems"] == [] and [n["network"] for n in plan["nics"]] == ["lan", "lan"]

    code, _, err = cli(server_url, "import", rel)  # unmapped: refused, one line, nothing made
    assert code == 1 and "VMnet0" in err and len(err.strip().splitlines()) <= 3
    code, out, err = cli(server_url, "import", rel, "--network-map", "*=lan", "--name", "attm")
    assert code == 0, err
    assert "imported vm attm" in out and "not carried over" in err
    done = cli_json(server_url, "vm", "show", "attm")
    assert [nic["mac"] for nic in done["spec"]["nics"]] == ["00:0c:29:3b:64:ea", "00:0c:29:3b:64:f4"]

    code, out, err = cli(server_url, "export", "attm", "attm-out", "--format", "ova")
    assert code == 0, err
    assert (live_server.settings.export_dir / "attm-out.ova").is_file()
    code, out, _ = cli(server_url, "export", "attm", "../escape", "--format", "vmx", "--json")
    assert code == 1 and json.loads(out)["error"]["field"] == "dest"
