"""Which reader a path needs: by what it is (a directory: a Hyper-V export), its extension, and for .xml its root."""

from __future__ import annotations

import posixpath

from virtfleet.v2v import hyperv, libvirt_xml, package, vmx, xl, xmlsafe
from virtfleet.v2v.errors import SourceError
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.model import SourceVm
from virtfleet.v2v.xmlsafe import local

MAX_XML = 4 << 20
DISK_EXTENSIONS = (".vhdx", ".vhd", ".avhdx", ".vmdk", ".qcow2", ".vdi")
XL_EXTENSIONS = ("", ".cfg", ".xl", ".conf", ".hvm", ".pv", ".xm")


def read_source(root: ImportDir, rel: str) -> SourceVm:
    """Read what `rel` (inside the import directory) describes. Raises SourceError (an InvalidSpec), nothing else."""
    kind = root.kind(rel)
    if kind == "missing":
        raise SourceError(root.display(rel), "path", "does not exist in the import directory")
    if kind == "dir":
        return hyperv.read_export(root, rel)
    if kind != "file":
        raise SourceError(rel, "path", f"is {kind}; only regular files and directories are imported")
    extension = posixpath.splitext(rel.lower())[1]
    if extension == ".vmx":
        return vmx.read(root, rel)
    if extension == ".ovf":
        return package.read_ovf(root, rel)
    if extension == ".ova":
        return package.read_ova(root, rel)
    if extension in DISK_EXTENSIONS:
        return hyperv.read_disk(root, rel)
    if extension == ".xml":
        data = root.read(rel, limit=MAX_XML, file=rel, field="xml")
        tag = local(xmlsafe.parse(data, rel).tag)
        if tag == "domain":
            return libvirt_xml.read(root, rel, data)
        if tag == "configuration":
            return hyperv.read_xml(root, rel, data)
        raise SourceError(rel, "xml", f"a <{tag}> document is neither a libvirt domain nor a Hyper-V configuration")
    if extension in XL_EXTENSIONS:
        return xl.read(root, rel)
    raise SourceError(rel, "path", f"{extension!r} files are not a VM description this import reads (.vmx, .ovf, "
                                   ".ova, .xml, xl .cfg, .vhdx/.vhd/.vmdk, or a Hyper-V export directory)")
