"""`virtfleet host adopt` against a live server on the fake driver: list, plan under a mapping, adopt."""

from __future__ import annotations

import uuid

from tests.functional.conftest import LiveServer
from tests.functional.test_cli import cli, cli_json
from tests.functional.test_host_adopt import domain_xml, qcow2
from virtfleet.drivers.base import DriverConfig
from virtfleet.drivers.fake import fake_host_for
from virtfleet.model.vm import VmState


def test_list_plan_and_adopt_from_the_command_line(server_url: str, live_server: LiveServer) -> None:
    pool = live_server.settings.default_pool
    disk = qcow2(pool / "web.qcow2")
    domain_uuid = str(uuid.uuid4())
    fake_host_for(DriverConfig(live_server.settings.run_dir)).add_foreign(
        "web", domain_uuid, domain_xml("web", domain_uuid, [(str(disk), "qcow2")]), VmState.RUNNING)
    assert cli_json(server_url, "network", "create", "lan", "--mode", "user")["name"] == "lan"

    code, out, err = cli(server_url, "host", "adopt")
    assert code == 0, err
    assert "web" in out and "default/web.qcow2" in out and "--network-map" in out  # unmapped: shown, not adoptable
    [plan] = cli_json(server_url, "host", "adopt", "--network-map", "default=lan")
    assert plan["adoptable"] is True
    code, out, err = cli(server_url, "host", "adopt", "web", "--dry-run", "--network-map", "default=lan")
    assert code == 0 and "yes" in out, err

    code, _, err = cli(server_url, "host", "adopt", "web")  # unmapped: refused in one line, nothing changed
    assert code == 1 and "interface0" in err
    code, out, err = cli(server_url, "host", "adopt", "web", "--network-map", "default=lan")
    assert code == 0, err
    assert "adopted running domain web as vm 'web'" in out
    assert cli_json(server_url, "vm", "show", "web")["state"] == "running"
    assert cli_json(server_url, "host", "adopt") == []
    assert cli_json(server_url, "host")["driver"] == "fake"  # `virtfleet host` still shows the host
