"""The CLI against a live server (uvicorn in a thread) on the fake driver: --json, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from tests.conftest import free_port
from virtfleet.cli.main import app as cli_app


def cli(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli_app, ["--url", url, *args])
    return result.exit_code, result.stdout, result.stderr


def cli_json(url: str, *args: str) -> Any:
    code, out, err = cli(url, *args, "--json")
    assert code == 0, (out, err)
    return json.loads(out)


def test_lifecycle_from_the_command_line(server_url: str, tmp_path: Path) -> None:
    spec = tmp_path / "vm.yaml"
    spec.write_text("name: fromfile\ncpus: 2\nmemory: 512M\nmachine: q35\n")
    created = cli_json(server_url, "vm", "create", "-f", str(spec))
    assert created["spec"] == {**created["spec"], "cpus": 2, "memory": 512, "machine": "q35"}

    assert cli_json(server_url, "vm", "start", "fromfile")["status"] == "succeeded"
    listed = cli_json(server_url, "vm", "list")
    assert [(v["name"], v["state"]) for v in listed] == [("fromfile", "running")]
    shown = cli_json(server_url, "vm", "show", "fromfile")
    assert shown["events"][-1]["kind"] == "started"
    code, out, _ = cli(server_url, "vm", "logs", "fromfile")
    assert code == 0 and "VIRTFLEET-READY" in out
    for verb in ("pause", "resume", "reboot"):
        assert cli_json(server_url, "vm", verb, "fromfile")["status"] == "succeeded"
    assert cli_json(server_url, "vm", "shutdown", "fromfile", "--timeout", "5")["status"] == "succeeded"
    assert cli_json(server_url, "vm", "delete", "fromfile")["status"] == "succeeded"
    assert cli_json(server_url, "vm", "list") == []


def test_errors_are_one_line_and_exit_non_zero(server_url: str) -> None:
    code, out, err = cli(server_url, "vm", "create", "bad/name")
    assert code == 1 and out == ""
    assert err.strip().startswith("error: name:") and len(err.strip().splitlines()) <= 2

    cli_json(server_url, "vm", "create", "x", "--start")
    code, _, err = cli(server_url, "vm", "start", "x")
    assert code == 1 and "it is running" in err
    code, out, _ = cli(server_url, "vm", "start", "x", "--json")
    assert code == 1 and json.loads(out)["error"]["current"] == "running"

    code, _, err = cli(server_url, "vm", "stop", "x")
    assert code == 2 and "--force" in err
    assert cli_json(server_url, "vm", "stop", "x", "--force")["status"] == "succeeded"


def test_display_option_and_show(server_url: str) -> None:
    code, _, err = cli(server_url, "vm", "create", "flat", "--display", "vnc")  # microvm: no graphics card
    assert code == 1 and err.strip().startswith("error: display:") and "q35" in err
    assert cli_json(server_url, "vm", "list") == []
    created = cli_json(server_url, "vm", "create", "desk", "--machine", "q35", "--display", "vnc")
    assert created["spec"]["display"] == "vnc"
    code, out, _ = cli(server_url, "vm", "show", "desk")
    assert code == 0 and any(line.split() == ["display:", "vnc"] for line in out.splitlines()), out


def test_unreachable_server_is_a_clear_error() -> None:
    code, _, err = cli(f"http://127.0.0.1:{free_port()}", "vm", "list")
    assert code == 1 and "is `virtfleet serve` running?" in err


def test_images_jobs_and_host(server_url: str) -> None:
    assert cli_json(server_url, "image", "list")[0]["built"] is True
    assert cli_json(server_url, "image", "build", "tiny")["status"] == "succeeded"
    jobs = cli_json(server_url, "job", "list")
    assert jobs[0]["kind"] == "image.build"
    assert cli_json(server_url, "job", "show", jobs[0]["id"])["id"] == jobs[0]["id"]
    host = cli_json(server_url, "host")
    assert host["driver"] == "fake" and host["kvm_usable"] is False
    assert host["capabilities"]["pause"] is True and host["capabilities"]["machines"] == ["microvm", "q35"]
    code, out, _ = cli(server_url, "host")
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line}
    assert code == 0 and lines["lacks"] == "live_migration" and lines["machines"] == "microvm, q35", out
    assert "pause" in lines["capabilities"].split(", ")


def test_users_tokens_and_audit_from_the_command_line(server_url: str) -> None:
    added = CliRunner().invoke(cli_app, ["--url", server_url, "user", "add", "carol", "--role", "operator",
                                         "--password-stdin", "--json"], input="a long passphrase\n")
    assert added.exit_code == 0, added.stderr
    assert json.loads(added.stdout)["role"] == "operator" and json.loads(added.stdout)["has_password"]
    short = CliRunner().invoke(cli_app, ["--url", server_url, "user", "add", "dan", "--password-stdin"], input="x\n")
    assert short.exit_code == 1 and "at least 8" in short.stderr
    token = cli_json(server_url, "token", "create", "ci", "--user", "carol")["token"]
    assert token.startswith("vf_")
    # The operator's token manages VMs but not users; the refusal is one line naming the role.
    assert cli_json(server_url, "--token", token, "vm", "create", "byop")["name"] == "byop"
    code, _, err = cli(server_url, "--token", token, "user", "list")
    assert code == 1 and "operator" in err and "needs admin" in err
    code, _, err = cli(server_url, "--token", "vf_wrong", "vm", "list")
    assert code == 1 and "invalid API token" in err
    audit = cli_json(server_url, "audit", "--user", "carol")
    assert [(e["method"], e["path"], e["status"]) for e in audit][:2] == [
        ("GET", "/api/v1/users", 403), ("POST", "/api/v1/vms", 201)]
    listed = cli_json(server_url, "token", "list", "--user", "carol")
    assert [t["name"] for t in listed] == ["ci"] and "token" not in listed[0]
    assert cli_json(server_url, "token", "delete", listed[0]["id"]) == {"deleted": listed[0]["id"]}
    code, _, err = cli(server_url, "--token", token, "vm", "list")
    assert code == 1 and "invalid API token" in err


def test_create_with_new_disks_is_one_call_that_leaves_nothing_when_refused(server_url: str) -> None:
    volumes = lambda: sorted(v["name"] for v in cli_json(server_url, "volume", "list"))  # noqa: E731
    # Refused before anything is made: the field is named and no volume is left to block the retry.
    code, _, err = cli(server_url, "vm", "create", "web", "--disk", "new:16M", "--nic", "lab")
    assert code == 1 and "nics[0].network" in err, err
    assert volumes() == []
    assert cli_json(server_url, "network", "create", "lab", "--mode", "user")["name"] == "lab"
    web = cli_json(server_url, "vm", "create", "web", "--disk", "new:16M", "--disk", "new:8M,format=raw,name=scratch",
                   "--nic", "lab")
    assert [d["volume"] for d in web["spec"]["disks"]] == ["default/web-disk0", "default/scratch"]
    assert volumes() == ["scratch", "web-disk0"]
    code, _, err = cli(server_url, "vm", "create", "x", "--disk", "new:8M,colour=red")
    assert code == 2 and "colour" in err

    # A template volume cloned as the boot disk, by the same one call.
    assert cli_json(server_url, "volume", "create", "golden", "--size", "8M")["status"] == "succeeded"
    cli_json(server_url, "volume", "template", "golden")
    booted = cli_json(server_url, "vm", "create", "t1", "--from-template", "golden", "--image", "none",
                      "--machine", "q35")
    assert booted["spec"]["disks"][0] == {**booted["spec"]["disks"][0], "volume": "default/t1-disk0", "boot_index": 0}
    assert cli_json(server_url, "volume", "show", "t1-disk0")["volume"]["base"] == "default/golden"
    code, _, err = cli(server_url, "vm", "create", "t2", "--from-template", "golden", "--image", "none")
    assert code == 1 and "q35" in err and "t2-disk0" not in volumes()  # microvm cannot boot a disk: nothing made
