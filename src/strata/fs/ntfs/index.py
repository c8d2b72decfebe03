"""Directory indexes: the children of one directory from its $I30 B+ tree ($INDEX_ROOT in the
record, INDX blocks in $INDEX_ALLOCATION), so a directory is listed without a volume scan.

References: Russon & Fledel "NTFS Documentation" 4.3 (INDX record), 5.9 ($INDEX_ROOT), 5.10
($INDEX_ALLOCATION), 7.5 (index entries); libfsntfs "Index" documentation (same facts).
Only nodes reachable from the root are read (stale blocks in the allocation are never seen);
a block is read once, so a looping tree ends.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from construct import ConstructError

from strata.errors import CorruptImage
from strata.fs.ntfs import structs as s
from strata.fs.ntfs.attributes import Attribute

Bad = Callable[[str, str, int], CorruptImage]  # (problem, field, offset)
Reader = Callable[[list[Attribute]], bytes]  # the content of an attribute's extents
MAX_BLOCKS = 1 << 20  # INDX blocks one directory may have


def children(attrs: list[Attribute], cluster_size: int, read: Reader, bad: Bad) -> list[int]:
    """File references (record number and sequence, as stored) of every entry in the $I30
    index of a directory with attributes ``attrs``, each reference once, in node order."""
    return list(dict.fromkeys(ref for ref, _key in entries(attrs, cluster_size, read, bad)))


def names(
    attrs: list[Attribute], cluster_size: int, read: Reader, bad: Bad
) -> list[tuple[int, int, str]]:
    """(file reference, namespace, name) of every entry in the $I30 index, in node order: a
    name and its DOS alias are two entries."""
    out = []
    for ref, key in entries(attrs, cluster_size, read, bad):
        length, namespace = key[s.FILE_NAME_SIZE - 2], key[s.FILE_NAME_SIZE - 1]
        if s.FILE_NAME_SIZE + 2 * length > len(key):
            raise bad(f"index key of {len(key)} bytes holds no {length}-unit name", "key", 0)
        raw = key[s.FILE_NAME_SIZE : s.FILE_NAME_SIZE + 2 * length]
        out.append((ref, namespace, raw.decode("utf-16-le", "surrogatepass")))
    return out


def entries(
    attrs: list[Attribute], cluster_size: int, read: Reader, bad: Bad
) -> list[tuple[int, bytes]]:
    """(file reference, key: a $FILE_NAME value) of every entry in the $I30 index, in node
    order: the root's entries, then each block's as the blocks are reached (last sub-node
    first), which is not the index's collation order; callers sort what they show."""
    root = [a for a in attrs if a.type == s.INDEX_ROOT and a.name == s.INDEX_NAME]
    if not root:
        raise bad("directory has no $I30 index root", "$INDEX_ROOT", 0)
    value = root[0].value
    try:
        head = s.INDEX_ROOT_HEADER.parse(value)
    except ConstructError as e:
        raise bad("index root shorter than its header", "$INDEX_ROOT", 0) from e
    size = head.block_size
    if size < 512 or size & (size - 1) or size > 1 << 16:
        raise bad(f"index block size {size}", "block_size", 8)
    found: list[tuple[int, bytes]] = []
    todo = _node(value, s.INDEX_ROOT_HEADER_SIZE, found, bad)
    if not todo:
        return found
    alloc = [a for a in attrs if a.type == s.INDEX_ALLOCATION and a.name == s.INDEX_NAME]
    if not alloc:
        raise bad("index entries point to sub-nodes but there is no allocation", "flags", 0)
    data = read(alloc)
    unit = cluster_size if size >= cluster_size else 512
    seen: set[int] = set()
    while todo:
        vcn = todo.pop()
        if vcn in seen:
            continue
        seen.add(vcn)
        if len(seen) > MAX_BLOCKS:
            raise bad("more index blocks than a directory can have", "vcn", 0)
        at = vcn * unit
        if at < 0 or at + size > len(data):
            raise bad(f"sub-node VCN {vcn} lies past the allocation", "vcn", 0)
        block = _fixup(bytearray(data[at : at + size]), vcn, bad)
        todo += _node(block, s.INDX_NODE_OFFSET, found, bad)
    return found


def _fixup(block: bytearray, vcn: int, bad: Bad) -> bytes:
    if block[:4] != s.INDX_MAGIC:
        raise bad(f"index block at VCN {vcn} has no INDX magic", "magic", 0)
    off, count = struct.unpack_from("<HH", block, 4)
    sectors = len(block) // 512
    if count != sectors + 1 or off < 0x28 or off + 2 * count > 512:
        raise bad(f"index block at VCN {vcn}: invalid update sequence array", "usa", 4)
    check = block[off : off + 2]
    for i in range(sectors):
        end = (i + 1) * 512
        if block[end - 2 : end] != check:
            raise bad(f"index block at VCN {vcn}: update sequence mismatch", "usa", end - 2)
        block[end - 2 : end] = block[off + 2 * (i + 1) : off + 2 * (i + 2)]
    if int.from_bytes(block[s.INDX_VCN_OFFSET : s.INDX_VCN_OFFSET + 8], "little") != vcn:
        raise bad(f"index block at VCN {vcn} names another VCN", "vcn", s.INDX_VCN_OFFSET)
    return bytes(block)


def _node(buf: bytes, at: int, found: list[tuple[int, bytes]], bad: Bad) -> list[int]:
    """Add the (reference, key) entries of the node whose header is at ``at``; its sub-node
    VCNs."""
    try:
        node = s.INDEX_NODE_HEADER.parse(buf[at : at + s.INDEX_NODE_HEADER_SIZE])
    except ConstructError as e:
        raise bad("index node header past its block", "node", at) from e
    pos, end = at + node.entries_offset, at + node.entries_end
    if node.entries_offset < s.INDEX_NODE_HEADER_SIZE or end > len(buf) or pos > end:
        raise bad("index entries lie outside their node", "entries_offset", at)
    subnodes: list[int] = []
    while True:
        if pos + s.INDEX_ENTRY_SIZE > end:
            raise bad("index node ends without a last entry", "entries", pos)
        ref, length, key, flags = struct.unpack_from(s.INDEX_ENTRY_FORMAT, buf, pos)
        if length < s.INDEX_ENTRY_SIZE or length % 8 or pos + length > end:
            raise bad(f"index entry of {length} bytes", "length", pos)
        if flags & s.INDEX_ENTRY_SUBNODE:
            if length < s.INDEX_ENTRY_SIZE + 8:
                raise bad("index entry too short for its sub-node VCN", "length", pos)
            subnodes.append(int.from_bytes(buf[pos + length - 8 : pos + length], "little"))
        if flags & s.INDEX_ENTRY_LAST:
            return subnodes
        if s.INDEX_ENTRY_SIZE + key > length or key < s.FILE_NAME_SIZE:
            raise bad(f"index key of {key} bytes", "key_length", pos)
        start = pos + s.INDEX_ENTRY_SIZE
        found.append((ref, bytes(buf[start : start + key])))
        pos += length
