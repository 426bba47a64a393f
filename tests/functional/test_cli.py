"""The CLI against a live server (uvicorn in a thread) on the fake driver: --json, exit codes, one-line errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from tests.functional.conftest import fake_tiny_builder, make_settings
from virtfleet.api.app import create_app
from virtfleet.cli.main import app as cli_app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    settings = make_settings(tmp_path / "data")
    fake_tiny_builder(settings.images_dir / "tiny")
    port = _free_port()
    config = uvicorn.Config(create_app(settings, builders={"tiny": fake_tiny_builder}), host="127.0.0.1",
                            port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


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
    code, _, err = cli(f"http://127.0.0.1:{_free_port()}", "vm", "list")
    assert code == 1 and "is `virtfleet serve` running?" in err


def test_images_jobs_and_host(server_url: str) -> None:
    assert cli_json(server_url, "image", "list")[0]["built"] is True
    assert cli_json(server_url, "image", "build", "tiny")["status"] == "succeeded"
    jobs = cli_json(server_url, "job", "list")
    assert jobs[0]["kind"] == "image.build"
    assert cli_json(server_url, "job", "show", jobs[0]["id"])["id"] == jobs[0]["id"]
    host = cli_json(server_url, "host")
    assert host["driver"] == "fake" and host["kvm_usable"] is False
