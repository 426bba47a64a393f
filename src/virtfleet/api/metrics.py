"""Usage over time for charts, and a Prometheus /metrics endpoint, both from the agent's stored samples."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from virtfleet.api.routes import ServerDep
from virtfleet.jobs import capability_check
from virtfleet.model.metrics import UsagePoint, rates
from virtfleet.model.vm import VmState
from virtfleet.server import Server
from virtfleet.store.db import utcnow
from virtfleet.store.metrics_repo import MetricsRepo

router = APIRouter(tags=["metrics"])


@router.get("/vms/{ref}/metrics", response_model=list[UsagePoint])
async def vm_metrics(ref: str, server: ServerDep,
                     minutes: Annotated[int, Query(ge=1, le=60)] = 60) -> list[UsagePoint]:
    """CPU, memory, disk and network rates of a VM over the last `minutes` (one point per sample interval)."""
    vm = server.vms.get(ref)
    capability_check.require(server.driver, "usage", what=f"report the usage of vm '{vm.name}'")
    return rates(MetricsRepo(server.db).since(vm.id, utcnow() - timedelta(minutes=minutes)))


class _Collector(Collector):
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        vms = self.server.db.list_vms()
        states = GaugeMetricFamily("virtfleet_vms", "VMs on this host by state", labels=["state"])
        for state in VmState:
            states.add_metric([state.value], sum(1 for vm in vms if vm.state is state))
        yield states
        latest = MetricsRepo(self.server.db).latest()
        names = {vm.id: vm.name for vm in vms}
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "cpu": CounterMetricFamily("virtfleet_vm_cpu_seconds", "Host CPU time used by the VM", labels=["vm"]),
            "memory": GaugeMetricFamily("virtfleet_vm_memory_bytes", "Resident memory of the VM", labels=["vm"]),
            "rd": CounterMetricFamily("virtfleet_vm_disk_read_bytes", "Bytes the VM read from its disks",
                                      labels=["vm"]),
            "wr": CounterMetricFamily("virtfleet_vm_disk_write_bytes", "Bytes the VM wrote to its disks",
                                      labels=["vm"]),
            "rx": CounterMetricFamily("virtfleet_vm_network_receive_bytes", "Bytes the VM received", labels=["vm"]),
            "tx": CounterMetricFamily("virtfleet_vm_network_transmit_bytes", "Bytes the VM sent", labels=["vm"]),
        }
        for vm_id, sample in latest.items():
            if vm_id not in names:
                continue
            label = [names[vm_id]]
            families["cpu"].add_metric(label, sample.cpu_seconds)
            families["memory"].add_metric(label, sample.memory_bytes)
            families["rd"].add_metric(label, sample.disk_read_bytes)
            families["wr"].add_metric(label, sample.disk_write_bytes)
            families["rx"].add_metric(label, sample.net_rx_bytes)
            families["tx"].add_metric(label, sample.net_tx_bytes)
        yield from families.values()


@router.get("/metrics", include_in_schema=False)
async def prometheus(server: ServerDep) -> Response:
    """Prometheus text exposition (scrape it at /api/v1/metrics)."""
    registry = CollectorRegistry()
    registry.register(_Collector(server))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
