"""A bridge-mode network joins an existing host bridge: anything else (a missing link, a plain device) is refused when
the network is made and reported when it is activated again at start-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from virtfleet.errors import InvalidSpec
from virtfleet.jobs.networks import NetworkService
from virtfleet.model.network import NetworkSpec
from virtfleet.network import host
from virtfleet.store.db import Database


def test_lo_is_a_link_but_not_a_bridge() -> None:
    assert host.link_exists("lo")
    problem = host.bridge_problem("lo")
    assert problem is not None and "lo is a device, not a bridge" in problem
    assert "no interface vf-nope" in (host.bridge_problem("vf-nope") or "")


@pytest.fixture
def service(tmp_path: Path) -> NetworkService:
    db = Database.sqlite(tmp_path / "db.sqlite")
    db.migrate()
    return NetworkService(db, tmp_path / "networks")


def test_creating_a_bridge_network_on_a_non_bridge_is_refused(service: NetworkService) -> None:
    with pytest.raises(InvalidSpec) as refused:
        asyncio.run(service.create(NetworkSpec(name="lan", mode="bridge", bridge="lo")))
    assert refused.value.field == "bridge" and "not a bridge" in refused.value.message
    assert service.all() == []


def test_activating_a_bridge_network_whose_bridge_is_no_bridge_reports_it(service: NetworkService) -> None:
    # Recorded when the link was a bridge; since then the host changed (here: it never was one).
    service.repo.add(NetworkSpec(name="lan", mode="bridge", bridge="lo"), "lo")
    problems = asyncio.run(service.activate_all())
    assert len(problems) == 1 and problems[0].startswith("network lan: bridge: lo is a device, not a bridge")
