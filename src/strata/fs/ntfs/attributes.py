"""One MFT record's attributes, decoded in Python: used for the few records a read touches
($MFT itself, a file being read, $Secure), never for the full-volume scan (see ``records``).

References: Russon & Fledel "NTFS Documentation" 4.2 (attribute header), 5.1-5.12 (values);
[MS-FSCC] 2.1.2 (reparse data buffers).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import CorruptImage
from strata.fs.ntfs import structs as s


@dataclass(frozen=True)
class Attribute:
    """One attribute of a record (``record`` is where it lives, maybe an extension record)."""

    record: int
    type: int
    name: str
    flags: int
    attr_id: int
    non_resident: bool
    value: bytes = b""  # resident value
    start_vcn: int = 0
    last_vcn: int = -1
    runlist: bytes = b""
    compression_unit: int = 0
    allocated_size: int = 0
    data_size: int = 0
    initialized_size: int = 0
    offset: int = 0  # byte offset of the attribute inside its record

    @property
    def size(self) -> int:
        return self.data_size if self.non_resident else len(self.value)

    @property
    def compressed(self) -> bool:
        return bool(self.flags & s.ATTR_FLAG_COMPRESSED)


@dataclass(frozen=True)
class Reparse:
    tag: int
    kind: str  # "symlink", "junction" or "reparse"
    target: str | None
    relative: bool = False


def parse_attributes(rec: bytes, number: int, where: str, base: int) -> list[Attribute]:
    """Every attribute of the fixed-up record ``rec`` (record number ``number``).

    ``base`` is the record's disk offset, only for error messages.
    """

    def bad(problem: str, field: str, at: int) -> CorruptImage:
        return CorruptImage(
            path=where,
            structure=f"MFT record {number}",
            problem=problem,
            field=field,
            offset=base + at,
        )

    in_use = min(int.from_bytes(rec[24:28], "little"), len(rec))
    pos = int.from_bytes(rec[20:22], "little")
    out: list[Attribute] = []
    while True:
        if pos + 8 > in_use:
            raise bad("attributes run past the bytes in use", "attribute.type", pos)
        atype = int.from_bytes(rec[pos : pos + 4], "little")
        if atype == s.ATTR_END:
            return out
        length = int.from_bytes(rec[pos + 4 : pos + 8], "little")
        if length < s.ATTR_COMMON_SIZE or length % 8 or pos + length > in_use:
            raise bad(f"attribute length {length} runs past the record", "attribute.length", pos)
        out.append(_attribute(rec[pos : pos + length], number, pos, bad))
        pos += length


_COMMON = struct.Struct(s.ATTR_COMMON_FORMAT)
_RESIDENT = struct.Struct(s.ATTR_RESIDENT_FORMAT)
_NONRESIDENT = struct.Struct(s.ATTR_NONRESIDENT_FORMAT)
_LIST_ENTRY = struct.Struct(s.ATTR_LIST_ENTRY_FORMAT)


def _attribute(raw: bytes, number: int, pos: int, bad) -> Attribute:  # type: ignore[no-untyped-def]
    """One attribute (``raw``: its ``length`` bytes, at least ATTR_COMMON_SIZE)."""
    try:
        atype, _length, non_resident, name_length, name_offset, flags, attr_id = (
            _COMMON.unpack_from(raw)
        )
        name_end = name_offset + 2 * name_length
        if name_end > len(raw):
            raise bad("attribute name runs past the attribute", "attribute.name_offset", pos)
        name = raw[name_offset:name_end].decode("utf-16-le", "surrogatepass")
        if not non_resident:
            if len(raw) < s.ATTR_RESIDENT_SIZE:
                raise bad("resident header cut short", "attribute.length", pos)
            value_length, value_offset, _indexed = _RESIDENT.unpack_from(raw, s.ATTR_COMMON_SIZE)
            end = value_offset + value_length
            if end > len(raw):
                raise bad("resident value runs past the attribute", "attribute.value_length", pos)
            return Attribute(
                number, atype, name, flags, attr_id, False, raw[value_offset:end], offset=pos
            )
        if len(raw) < s.ATTR_NONRESIDENT_SIZE:
            raise bad("non-resident header cut short", "attribute.length", pos)
        start_vcn, last_vcn, runlist_offset, unit, allocated, data_size, initialized = (
            _NONRESIDENT.unpack_from(raw, s.ATTR_COMMON_SIZE)
        )
        if runlist_offset > len(raw) or last_vcn + 1 < start_vcn:
            raise bad("runlist offset or VCN range is invalid", "attribute.runlist_offset", pos)
        if initialized > data_size or data_size > 1 << 62:
            raise bad("sizes disagree", "attribute.data_size", pos)
        return Attribute(
            number,
            atype,
            name,
            flags,
            attr_id,
            True,
            start_vcn=start_vcn,
            last_vcn=last_vcn,
            runlist=raw[runlist_offset:],
            compression_unit=unit,
            allocated_size=allocated,
            data_size=data_size,
            initialized_size=initialized,
            offset=pos,
        )
    except (struct.error, UnicodeDecodeError) as e:
        raise bad(f"attribute header unreadable: {e}", "attribute", pos) from e


def parse_attribute_list(value: bytes, bad) -> list[tuple[int, str, int, int]]:  # type: ignore[no-untyped-def]
    """Entries (type, name, start_vcn, record number) of an $ATTRIBUTE_LIST value."""
    out = []
    pos = 0
    while pos + s.ATTR_LIST_ENTRY_SIZE <= len(value):
        atype, length, name_length, name_offset, start_vcn, base_ref, _id = _LIST_ENTRY.unpack_from(
            value, pos
        )
        if length < s.ATTR_LIST_ENTRY_SIZE or length % 8 or pos + length > len(value):
            raise bad(f"attribute list entry length {length}", "attribute_list.length", pos)
        name_end = name_offset + 2 * name_length
        if name_end > length:
            raise bad("attribute list name runs past its entry", "attribute_list.name", pos)
        raw_name = value[pos + name_offset : pos + name_end]
        name = raw_name.decode("utf-16-le", "surrogatepass")
        out.append((atype, name, start_vcn, base_ref & s.REF_RECORD_MASK))
        pos += length
    return out


def parse_standard_info(value: bytes) -> dict[str, int]:
    if len(value) < s.STANDARD_INFO_V1_SIZE:
        return {}
    padded = value[: s.STANDARD_INFO_V3_SIZE].ljust(s.STANDARD_INFO_V3_SIZE, b"\0")
    info = s.STANDARD_INFO.parse(padded)
    return {k: v for k, v in info.items() if not k.startswith("_")}


def parse_reparse(value: bytes) -> Reparse | None:
    """The link a reparse point names (symlink or junction), else just its tag."""
    if len(value) < s.REPARSE_HEADER_SIZE:
        return None
    tag = s.REPARSE_HEADER.parse(value).tag
    body = value[s.REPARSE_HEADER_SIZE :]
    if tag not in (s.TAG_SYMLINK, s.TAG_MOUNT_POINT) or len(body) < 8:
        return Reparse(tag, "reparse", None)
    link = s.REPARSE_LINK.parse(body)
    paths = body[12:] if tag == s.TAG_SYMLINK else body[8:]
    relative = tag == s.TAG_SYMLINK and len(body) >= 12 and bool(body[8] & s.SYMLINK_RELATIVE)
    offset, length = link.print_offset, link.print_length
    if length == 0:
        offset, length = link.subst_offset, link.subst_length
    target = paths[offset : offset + length].decode("utf-16-le", "replace")
    kind = "symlink" if tag == s.TAG_SYMLINK else "junction"
    return Reparse(tag, kind, target, relative)
