"""Foreign libvirt domains on libvirt's in-process mock hypervisor (test:///default, no daemon): which domains are
offered for adoption, and what taking one over writes (and refuses)."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from virtfleet.errors import Conflict, InvalidSpec, NotFound
from virtfleet.model.vm import VmSpec, VmState

libvirt = pytest.importorskip("libvirt")
foreign = pytest.importorskip("virtfleet.drivers.libvirt.foreign")
domxml = pytest.importorskip("virtfleet.drivers.libvirt.domxml")

SPEC = VmSpec(name="adopted", image=None, machine="q35", disks=[{"path": "/guest/diskimage1", "format": "raw"}])


def domain_xml(name: str) -> str:
    return f"""<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid><memory>65536</memory>
      <vcpu>1</vcpu><os><type>hvm</type></os></domain>"""


@pytest.fixture
def conn() -> Iterator[Any]:
    connection = libvirt.open("test:///default")
    made: list[Any] = []
    connection.made = made
    try:
        yield connection
    finally:
        for domain in made:  # test:///default is shared within the process: leave it as found
            persistent = domain.isPersistent()
            if domain.isActive():
                domain.destroy()  # a transient domain is gone with it
            if persistent:
                domain.undefine()
        connection.close()


def define(conn: Any, *, start: bool = False) -> Any:
    domain = conn.defineXML(domain_xml(f"foreign-{uuid.uuid4().hex[:8]}"))
    conn.made.append(domain)
    if start:
        domain.create()
    return domain


def names(conn: Any) -> set[str]:
    return {domain.name for domain in foreign.list_foreign(conn)}


def our_element(xml: str) -> ET.Element | None:
    metadata = ET.fromstring(xml).find("metadata")  # noqa: S314 - libvirt's own output
    return None if metadata is None else metadata.find(f"{{{domxml.NAMESPACE}}}vm")


def test_list_offers_every_domain_without_our_metadata_with_its_state_and_xml(conn: Any) -> None:
    stopped = define(conn)
    found = {domain.name: domain for domain in foreign.list_foreign(conn)}
    assert "test" in found  # the mock's own running domain
    assert found["test"].state is VmState.RUNNING
    assert found["test"].persistent
    assert "<source file='/guest/diskimage1'/>" in found["test"].xml
    assert found[stopped.name()].state is VmState.STOPPED
    assert found[stopped.name()].uuid == stopped.UUIDString()


def test_take_over_marks_a_running_domain_live_and_persistently_and_it_is_no_longer_foreign(conn: Any) -> None:
    domain = define(conn, start=True)
    vm_id = domain.UUIDString()
    foreign.take_over(conn, domain.name(), vm_id, SPEC, "/run/a")
    assert domain.name() not in names(conn)
    for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):  # live and next boot
        element = our_element(domain.XMLDesc(flags))
        assert element is not None
        assert element.findtext(f"{{{domxml.NAMESPACE}}}id") == vm_id
        assert VmSpec.model_validate_json(element.findtext(f"{{{domxml.NAMESPACE}}}spec") or "") == SPEC
    assert domain.isActive()  # nothing was restarted
    with pytest.raises(Conflict, match="virtfleet's already"):
        foreign.take_over(conn, domain.name(), vm_id, SPEC, "/run/a")


def test_take_over_of_a_stopped_domain_writes_the_persistent_definition(conn: Any) -> None:
    domain = define(conn)
    foreign.take_over(conn, domain.name(), domain.UUIDString(), SPEC, "/run/a")
    assert our_element(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) is not None
    assert not domain.isActive()
    assert domain.name() not in names(conn)


def test_a_domain_marked_only_in_its_persistent_definition_is_ours_too(conn: Any) -> None:
    domain = define(conn, start=True)
    domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domxml.metadata_xml("vm-2", SPEC, "/run/a"),
                       foreign.METADATA_KEY, domxml.NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert our_element(domain.XMLDesc(0)) is None
    assert domain.name() not in names(conn)


def test_a_transient_domain_is_listed_but_refused_and_left_unmarked(conn: Any) -> None:
    domain = conn.createXML(domain_xml(f"transient-{uuid.uuid4().hex[:8]}"), 0)
    conn.made.append(domain)
    listed = {d.name: d for d in foreign.list_foreign(conn)}
    assert listed[domain.name()].persistent is False
    with pytest.raises(Conflict, match=r"transient.*cannot be managed across restarts"):
        foreign.take_over(conn, domain.name(), domain.UUIDString(), SPEC, "/run/a")
    assert our_element(domain.XMLDesc(0)) is None


def test_an_unknown_domain_is_not_found(conn: Any) -> None:
    with pytest.raises(NotFound):
        foreign.take_over(conn, f"missing-{uuid.uuid4().hex[:8]}", "vm-4", SPEC, "/run/a")


def test_an_id_other_than_the_domains_uuid_is_refused_and_the_domain_left_unmarked(conn: Any) -> None:
    """The driver finds its domains by the UUID it derives from the VM id: under another id the domain taken over
    would be lost to it."""
    domain = define(conn)
    with pytest.raises(InvalidSpec, match="vm_id"):
        foreign.take_over(conn, domain.name(), str(uuid.uuid4()), SPEC, "/run/a")
    assert our_element(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) is None
    assert domain.name() in names(conn)
