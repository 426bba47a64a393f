"""Usage sampling and its two outputs: chart data per VM, and Prometheus /metrics (fake hypervisor)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tests.functional.conftest import Api, open_api


def test_running_vms_are_sampled_and_served_as_rates_and_prometheus(api: Api) -> None:
    api.create("m1")
    api.create("idle")
    api.run("m1", "start")
    server = api.client.app.state.server  # type: ignore[attr-defined]
    for _ in range(3):  # sample by hand rather than wait for the sampler's interval
        assert api.client.portal.call(server.sampler.sample_once) == 1  # type: ignore[union-attr]
    points = api.client.get("/api/v1/vms/m1/metrics", params={"minutes": 5}).json()
    assert len(points) >= 1 and all(p["cpu_percent"] >= 0 and p["memory_bytes"] == 256 << 20 for p in points)
    assert api.client.get("/api/v1/vms/idle/metrics").json() == []  # a stopped VM has no samples
    assert api.client.get("/api/v1/vms/m1/metrics", params={"minutes": 0}).status_code == 422

    text = api.client.get("/api/v1/metrics").text
    assert 'virtfleet_vms{state="running"} 1.0' in text and 'virtfleet_vms{state="stopped"} 1.0' in text
    assert 'virtfleet_vm_memory_bytes{vm="m1"} 2.68435456e+08' in text
    assert 'virtfleet_vm_cpu_seconds_total{vm="m1"}' in text and 'vm="idle"' not in text


def test_a_driver_without_usage_is_not_sampled(tmp_path: Path) -> None:
    with contextlib.contextmanager(open_api)(tmp_path / "data", fake_capabilities='{"usage": false}') as api:
        api.create("m1")
        api.run("m1", "start")
        server = api.server
        assert api.client.portal.call(server.sampler.sample_once) == 0  # type: ignore[union-attr]
        assert api.host.domains[api.vm("m1")["id"]].ticks == 0  # the driver was never asked
        refused = api.client.get("/api/v1/vms/m1/metrics")
        assert refused.status_code == 501 and refused.json()["error"]["capability"] == "usage"
