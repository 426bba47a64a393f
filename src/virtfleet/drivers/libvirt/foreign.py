"""Domains other tools made (virt-manager, oVirt's VDSM, virsh): finding them, and taking them over in place.

A domain is virtfleet's when its <metadata> holds our element (namespace NAMESPACE); every other domain is foreign.
Taking one over adds that element, with the VM id and the spec virtfleet recorded, to the persistent definition and,
when it runs, to the live one too: the guest keeps running, nothing is redefined or restarted. A transient domain has
no definition that outlives it (it is gone at its next stop), so it cannot be taken over.

Blocking libvirt calls: run these functions in a worker thread.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # libvirt's own output only, never a user's file
from typing import Any

import libvirt

from virtfleet.drivers.base import ForeignDomain
from virtfleet.drivers.libvirt import domxml
from virtfleet.drivers.libvirt.state import map_state
from virtfleet.errors import Conflict, DriverError, InvalidSpec, NotFound
from virtfleet.model.vm import VmSpec, VmState

METADATA_KEY = "virtfleet"  # the prefix libvirt gives our namespace in the XML it writes


def domain_state(domain: Any) -> VmState:
    return map_state(*domain.state())[0]


def _has_our_metadata(xml: str) -> bool:
    metadata = ET.fromstring(xml).find("metadata")  # noqa: S314 - libvirt's own XML, not a user's file
    return metadata is not None and any(child.tag.startswith(f"{{{domxml.NAMESPACE}}}") for child in metadata)


def is_ours(domain: Any) -> bool:
    """Whether either definition of the domain (the live one, or the persistent one of a running domain) carries
    our metadata: a domain marked in one is never offered for adoption again."""
    if _has_our_metadata(domain.XMLDesc(0)):
        return True
    return bool(domain.isPersistent() and domain.isActive()
                and _has_our_metadata(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))


def _foreign(domain: Any) -> ForeignDomain:
    # The persistent definition is what the domain boots with next; a running domain's live XML has the same
    # devices plus runtime details (ids, aliases) the v2v reader ignores.
    return ForeignDomain(name=domain.name(), uuid=domain.UUIDString(), state=domain_state(domain),
                         persistent=bool(domain.isPersistent()), xml=domain.XMLDesc(0))


def list_foreign(conn: Any) -> list[ForeignDomain]:
    """Every domain of the connection, persistent or running, that is not virtfleet's; sorted by name."""
    found = []
    for domain in conn.listAllDomains(0):
        try:
            if not is_ours(domain):
                found.append(_foreign(domain))
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue  # undefined while we listed it
            raise DriverError("cannot read the domains of the host", str(error)) from None
    return sorted(found, key=lambda domain: domain.name)


def take_over(conn: Any, name: str, vm_id: str, spec: VmSpec, owner: str) -> None:
    """Make the foreign domain `name` virtfleet's VM `vm_id`: our metadata into its persistent definition, and into
    the live one when it runs (AFFECT_CONFIG | AFFECT_LIVE: the guest is not touched)."""
    try:
        domain = conn.lookupByName(name)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise NotFound("domain", name) from None
        raise DriverError(f"cannot look up domain {name}", str(error)) from None
    if not domain.isPersistent():
        raise Conflict(f"domain {name} is transient: it has no definition that outlives it, so it cannot be managed "
                       f"across restarts; make it persistent first (virsh dumpxml {name} > {name}.xml; "
                       f"virsh define {name}.xml)")
    if is_ours(domain):
        raise Conflict(f"domain {name} is virtfleet's already")
    if domxml.domain_uuid(vm_id) != domain.UUIDString():  # the driver finds its domains by that UUID
        raise InvalidSpec("vm_id", f"domain {name} has the uuid {domain.UUIDString()}: take it over under that id, "
                                   f"not {vm_id}")
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if domain.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    try:
        domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domxml.metadata_xml(vm_id, spec, owner), METADATA_KEY,
                           domxml.NAMESPACE, flags)
    except libvirt.libvirtError as error:
        raise DriverError(f"cannot mark domain {name} as virtfleet's", str(error)) from None

