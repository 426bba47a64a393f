"""Parsing XML of unknown origin (OVF, libvirt domains, Hyper-V configurations) without its tricks.

No document type declarations at all (so no entities: no billion laughs, no external entity that reads a host file),
bounded size, depth and element count; anything else is one SourceError naming the file and the line.
"""

from __future__ import annotations

import codecs
import xml.etree.ElementTree as ET
from xml.parsers import expat

from virtfleet.v2v.errors import SourceError

MAX_XML_BYTES = 8 << 20
MAX_DEPTH = 64
MAX_ELEMENTS = 200_000


class _Refused(Exception):
    pass


def _qname(name: str) -> str:
    # expat with namespace_separator=" " reports "uri local"; ElementTree spells it "{uri}local".
    uri, sep, local = name.rpartition(" ")
    return f"{{{uri}}}{local}" if sep else name


def _as_utf8(data: bytes) -> bytes | None:
    """The document as UTF-8 when we can tell (a BOM, or bytes that are valid UTF-8), else None (expat then follows
    the XML declaration). XenCenter writes UTF-8 files that declare encoding="utf-16"; Hyper-V writes UTF-16."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            return None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return data


def parse(data: bytes, file: str) -> ET.Element:
    if len(data) > MAX_XML_BYTES:
        raise SourceError(file, "xml", f"is {len(data)} bytes, more than {MAX_XML_BYTES}")
    builder = ET.TreeBuilder()
    utf8 = _as_utf8(data)
    parser = expat.ParserCreate("utf-8" if utf8 is not None else None, namespace_separator=" ")
    data = utf8 if utf8 is not None else data
    parser.buffer_text = True
    depth = 0
    count = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth, count
        depth += 1
        count += 1
        if depth > MAX_DEPTH:
            raise _Refused(f"elements are nested deeper than {MAX_DEPTH}")
        if count > MAX_ELEMENTS:
            raise _Refused(f"has more than {MAX_ELEMENTS} elements")
        builder.start(_qname(name), {_qname(key): value for key, value in attrs.items()})

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(_qname(name))

    def doctype(*_: object) -> None:
        raise _Refused("has a document type declaration (DTDs and entities are refused)")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    parser.ExternalEntityRefHandler = doctype  # type: ignore[assignment]
    try:
        parser.Parse(data, True)
        root = builder.close()
    except _Refused as exc:
        raise SourceError(file, f"line {parser.CurrentLineNumber}", str(exc)) from None
    except expat.ExpatError as exc:
        raise SourceError(file, f"line {exc.lineno}", f"not well-formed XML: {expat.ErrorString(exc.code)}"
                          ) from None
    except LookupError as exc:  # expat asks Python's codecs for the encoding the declaration names
        raise SourceError(file, "encoding", f"the XML declaration names an unknown encoding ({exc})") from None
    except (RecursionError, MemoryError, ValueError, AssertionError) as exc:
        raise SourceError(file, "xml", f"cannot be parsed: {type(exc).__name__}") from None
    return root


def local(tag: str) -> str:
    """An element or attribute name without its namespace."""
    return tag.rpartition("}")[2]


def attr(element: ET.Element, name: str) -> str | None:
    """An attribute by local name, whatever namespace prefix the writer used (ovf:href, href, ...)."""
    for key, value in element.attrib.items():
        if local(key) == name:
            return value
    return None


def children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if local(child.tag) == name]


def child(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if local(c.tag) == name), None)


def text(element: ET.Element | None, name: str | None = None) -> str | None:
    """The stripped text of `element` (or of its first child called `name`); None when absent or empty."""
    target = element if name is None or element is None else child(element, name)
    if target is None or target.text is None:
        return None
    return target.text.strip() or None
