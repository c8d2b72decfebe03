"""The full-volume MFT scan, in bulk with numpy: records are read in big windows, fixed up
together, and their attribute chains walked one step for all records at once; only names
(one decode per window) and the rare named stream are touched in Python.

References: Russon & Fledel "NTFS Documentation" 4.1 (FILE record, update sequence), 4.2
(attribute header), 5.1 ($STANDARD_INFORMATION), 5.3 ($FILE_NAME), 5.7 ($DATA), 5.12
($REPARSE_POINT).  See ``structs`` for the layouts.

A record that fails validation (magic, update sequence, an attribute running past the bytes
in use) is left out and reported as a :class:`RecordProblem`, so one bad record never stops a
listing; a parent-reference cycle or a missing parent makes its entries orphans, reported the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from strata.fs.ntfs import structs as s
from strata.native import join_spans, mft_scan

FIXUP_STRIDE = 512  # the update sequence protects every 512 bytes, whatever the sector size
_AR = {n: np.arange(n) for n in (2, 4, 8)}


@dataclass(frozen=True)
class RecordProblem:
    """One MFT record left out of a listing, and why (a named warning, not an error)."""

    record: int
    offset: int | None
    problem: str

    def __str__(self) -> str:
        where = f" (disk offset {self.offset:#x})" if self.offset is not None else ""
        return f"MFT record {self.record}{where}: {self.problem}"


class Attributes(NamedTuple):
    """Attribute rows of a scanned window: record row, byte index into the window, type,
    length."""

    row: np.ndarray
    pos: np.ndarray
    type: np.ndarray
    length: np.ndarray


ROW_FIELDS = 12  # flags, sequence, base, links, size, reparse, 6 $STANDARD_INFORMATION values


FIELDS: dict[str, int | slice] = {
    "flags": 0,  # header flags, 0 for records not in use
    "sequence": 1,
    "base": 2,
    "links": 3,
    "size": 4,  # unnamed $DATA size
    "reparse": 5,  # reparse tag
    "si": slice(6, 12),  # 4 times, attributes, security id
}
ROW_FIELDS = 12


class Columns:
    """What the scan keeps: per-record tables (filled window by window, indexed by record
    number) and rows for the variable parts (names, named streams, problems).

    Each table is as wide as its on-disk field (a listing keeps them all, for every record
    of the MFT: as int64 they were 96 bytes a record, 19 MB of a 200 000-record scan); the
    $STANDARD_INFORMATION values are three tables, ``si`` joins them as int64 rows."""

    def __init__(self, nrec: int) -> None:
        self.nrec = nrec
        self.flags = np.zeros(nrec, np.uint16)
        self.sequence = np.zeros(nrec, np.uint16)
        self.base = np.zeros(nrec, bool)  # an extension record: its base reference is not 0
        self.links = np.zeros(nrec, np.uint16)
        self.size = np.zeros(nrec, np.int64)
        self.reparse = np.zeros(nrec, np.uint32)
        self.times = np.zeros((nrec, 4), np.int64)  # created, modified, MFT modified, accessed
        self.attributes = np.zeros(nrec, np.uint32)
        self.security = np.zeros(nrec, np.uint32)
        self._parts()

    def _parts(self) -> None:
        # The names: ``fn`` rows (owner, parent reference, namespace; no DOS names), the
        # names as UTF-8 (unpaired surrogates as Python's surrogatepass writes them), each
        # followed by NUL, and each name's bytes.  One growing table each (the pages past
        # the last row are never touched), not a block per window: freed after a
        # 200 000-record listing was built, such blocks left 8 MB of holes in the heap.
        self._fn = np.empty((max(self.nrec, 64), 3), np.int64)
        self._lengths = np.empty(max(self.nrec, 64), np.uint16)
        self._text = bytearray()
        self._named = 0
        self.ads: list[tuple[int, str, int]] = []  # owner, name, size
        self.problems: list[RecordProblem] = []

    def add_names(self, fn: np.ndarray, text: bytes, lengths: np.ndarray) -> None:
        """A window's ``fn`` rows, their names' ``text`` and ``lengths``."""
        end = self._named + len(fn)
        if end > len(self._fn):
            self._fn, self._lengths = _grown(self._fn, end), _grown(self._lengths, end)
        self._fn[self._named : end] = fn
        self._lengths[self._named : end] = lengths
        self._text += text
        self._named = end

    @property
    def fn(self) -> list[np.ndarray]:
        """The ``fn`` rows, as parts (one)."""
        return [self._fn[: self._named]]

    @property
    def texts(self) -> list[bytes | bytearray]:
        return [self._text]

    @property
    def lengths(self) -> list[np.ndarray]:
        return [self._lengths[: self._named]]

    def take_names(self) -> tuple[np.ndarray, bytearray, np.ndarray]:
        """The ``fn`` rows, names and lengths, handed over: the table lets them go."""
        named = self.fn[0], self._text, self.lengths[0]
        self._parts()
        return named

    @property
    def si(self) -> np.ndarray:
        """The $STANDARD_INFORMATION values as int64 rows: 4 times, attributes, security id."""
        return np.column_stack([self.times, self.attributes, self.security]).astype(np.int64)

    def set(self, field: str, where: slice | np.ndarray, values: np.ndarray) -> None:
        """Field ``field`` of records ``where`` (a slice or record numbers)."""
        getattr(self, field)[where] = values

    def scatter(self, field: str, owner: np.ndarray, values: np.ndarray) -> None:
        """Field ``field`` of records ``owner`` (numbers out of range ignored)."""
        n = owner.size
        run = n > 0 and owner[0] >= 0 and owner[-1] < self.nrec and owner[-1] - owner[0] == n - 1
        if run and (n == 1 or (np.diff(owner) == 1).all()):  # the usual run: one copy
            self._put(field, slice(int(owner[0]), int(owner[0]) + n), values)
            return
        ok = (owner >= 0) & (owner < self.nrec)
        self._put(field, owner[ok], values[ok])

    def _put(self, field: str, where: slice | np.ndarray, values: np.ndarray) -> None:
        if field != "si":
            getattr(self, field)[where] = values
            return
        self.times[where] = values[:, :4]
        self.attributes[where] = values[:, 4]
        self.security[where] = values[:, 5]

    @property
    def names(self) -> list[str]:
        """Every name, in ``fn`` row order."""
        return [n for part in range(len(self.texts)) for n in self.part_names(part)]

    def part_names(self, part: int) -> list[str]:
        text = self.texts[part].decode("utf-8", "surrogatepass")
        names = text.split("\0")[:-1]
        if len(names) == len(self.lengths[part]):
            return names
        return split_names(self.texts[part], self.lengths[part])  # a name holds NUL


def split_names(text: bytes, lengths: np.ndarray) -> list[str]:
    """The names of a part's ``text`` cut by their ``lengths`` (each followed by NUL)."""
    spans = lengths.astype(np.int64) + 1
    starts = (np.cumsum(spans) - spans).tolist()
    return [
        text[a : a + n].decode("utf-8", "surrogatepass")
        for a, n in zip(starts, lengths.tolist(), strict=True)
    ]


def _grown(table: np.ndarray, rows: int) -> np.ndarray:
    """``table`` in an array of at least ``rows`` rows (twice as many as it had)."""
    out = np.empty((max(rows, 2 * len(table)), *table.shape[1:]), table.dtype)
    out[: len(table)] = table
    return out


class SparseColumns(Columns):
    """``Columns`` for a few records of a big MFT: a compact table with one row per record
    seen (slots given out in order), so the parsing cost follows the records parsed, not the
    MFT; only the record -> slot map (4 bytes a record, filled with numpy) spans the MFT."""

    def __init__(self, nrec: int) -> None:
        self.nrec = nrec
        self.slot = np.full(nrec, -1, np.int32)  # record number -> row of ``rows``
        self.used = 0
        self.rows = np.zeros((64, ROW_FIELDS), np.int64)
        self._last: tuple[slice | np.ndarray, np.ndarray] | None = None  # where, its slots
        self._parts()

    def _parts(self) -> None:
        # As ``Columns``, but a part per window: the NTFS delta reads the names a load adds.
        self._fn_parts: list[np.ndarray] = []
        self._text_parts: list[bytes | bytearray] = []
        self._length_parts: list[np.ndarray] = []
        self.ads = []
        self.problems = []

    def add_names(self, fn: np.ndarray, text: bytes, lengths: np.ndarray) -> None:
        self._fn_parts.append(fn)
        self._text_parts.append(text)
        self._length_parts.append(lengths)

    @property
    def fn(self) -> list[np.ndarray]:
        return self._fn_parts

    @property
    def texts(self) -> list[bytes | bytearray]:
        return self._text_parts

    @property
    def lengths(self) -> list[np.ndarray]:
        return self._length_parts

    def slot_of(self, numbers: np.ndarray) -> np.ndarray:
        """The table rows of records ``numbers`` (in range), given out to the ones not seen
        yet."""
        at = self.slot[numbers]
        if (at < 0).any():
            fresh = distinct(numbers[at < 0])
            self.slot[fresh] = np.arange(self.used, self.used + fresh.size, dtype=np.int32)
            self.used += fresh.size
            if self.used > len(self.rows):
                grown = np.zeros((max(self.used, 2 * len(self.rows)), ROW_FIELDS), np.int64)
                grown[: len(self.rows)] = self.rows
                self.rows = grown
            at = self.slot[numbers]
        return at.astype(np.int64)

    def get(self, numbers: np.ndarray) -> np.ndarray:
        """The table rows of records ``numbers`` (zeros for records never seen or out of
        range)."""
        numbers = np.asarray(numbers, np.int64)
        inside = (numbers >= 0) & (numbers < self.nrec)
        at = np.full(numbers.size, -1, np.int64)
        at[inside] = self.slot[numbers[inside]]
        out = self.rows[np.maximum(at, 0)] if at.size else np.zeros((0, ROW_FIELDS), np.int64)
        out[at < 0] = 0
        return out

    def put(self, numbers: np.ndarray, rows: np.ndarray) -> None:
        at = self.slot_of(numbers)  # first: it may grow the table
        self.rows[at] = rows

    def set(self, field: str, where: slice | np.ndarray, values: np.ndarray) -> None:
        if self._last is None or self._last[0] is not where:  # a window sets several fields
            numbers = np.arange(where.start, where.stop) if isinstance(where, slice) else where
            self._last = (where, self.slot_of(numbers))
        self.rows[self._last[1], FIELDS[field]] = values

    def scatter(self, field: str, owner: np.ndarray, values: np.ndarray) -> None:
        ok = (owner >= 0) & (owner < self.nrec)
        at = self.slot_of(owner[ok])
        self.rows[at, FIELDS[field]] = values[ok]


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of ``values``: ``numpy.unique`` without its first call's
    import of ``numpy.ma`` (8 ms of a CLI listing's start-up)."""
    ordered = np.sort(values)
    if ordered.size < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def gather(flat: np.ndarray, idx: np.ndarray, width: int) -> np.ndarray:
    """Little-endian unsigned ints of ``width`` bytes at each byte index ``idx`` of ``flat``."""
    out_type = np.int64 if width < 8 else np.uint64
    if not (idx & (width - 1)).any():  # attributes are 8-byte aligned: one gather per field
        return flat.view(f"<u{width}")[idx // width].astype(out_type, copy=False)
    raw = flat[idx[:, None] + _AR[width]]
    return raw.view(f"<u{width}")[:, 0].astype(out_type, copy=False)


def apply_fixups(buf: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Fix up every record of ``buf`` (records by record_size bytes) in place.

    Returns (ok, problem code) per record: code 0 ok, 1 never used (no magic), 2 bad magic,
    3 bad update sequence array, 4 a sector's check value disagrees (a torn write).
    """
    n, rs = buf.shape
    nsec = rs // FIXUP_STRIDE
    head = buf.view(dtype)[:, 0]
    code = np.zeros(n, np.int8)
    magic = head["magic"]
    code[magic != s.FILE_MAGIC] = 2
    code[magic == 0] = 1
    off = head["usa_offset"].astype(np.int64)
    shape_ok = (head["usa_count"] == nsec + 1) & (off >= 40) & (off % 2 == 0)
    shape_ok &= off + 2 * (nsec + 1) <= FIXUP_STRIDE - 2
    code[(code == 0) & ~shape_ok] = 3
    rows = np.flatnonzero(code == 0)
    if rows.size == 0:
        return code == 0, code
    sectors = buf.reshape(n, nsec, FIXUP_STRIDE)
    first = int(off[rows[0]])
    if buf.flags.c_contiguous and (off[rows] == first).all():  # usual: one layout, 16-bit
        words = buf.view("<u2")
        w, step = first // 2, FIXUP_STRIDE // 2
        tails = words[:, step - 1 :: step]  # the last word of each 512 bytes
        valid = code == 0
        match = (tails == words[:, w : w + 1]).all(axis=1)
        code[valid & ~match] = 4
        valid &= match
        if valid.all():
            tails[:] = words[:, w + 1 : w + 1 + nsec]
        else:
            good = np.flatnonzero(valid)
            tails[good] = words[good, w + 1 : w + 1 + nsec]
        return valid, code
    idx = off[rows, None] + 2 * np.arange(nsec + 1)
    lo, hi = buf[rows[:, None], idx], buf[rows[:, None], idx + 1]
    tail_lo, tail_hi = sectors[rows, :, -2], sectors[rows, :, -1]
    match = np.all((tail_lo == lo[:, :1]) & (tail_hi == hi[:, :1]), axis=1)
    code[rows[~match]] = 4
    good = rows[match]
    sectors[good, :, -2] = lo[match, 1:]
    sectors[good, :, -1] = hi[match, 1:]
    return code == 0, code


def fixup_one(raw: bytes) -> tuple[bytes, int]:
    """``apply_fixups`` for one record, in Python (numpy's per-call cost is most of a single
    record's read): the fixed-up bytes and the problem code (0 ok; else the bytes as given)."""
    rs = len(raw)
    nsec = rs // FIXUP_STRIDE
    magic = int.from_bytes(raw[0:4], "little")
    if magic != s.FILE_MAGIC:
        return raw, 1 if magic == 0 else 2
    off, count = int.from_bytes(raw[4:6], "little"), int.from_bytes(raw[6:8], "little")
    if count != nsec + 1 or off < 40 or off % 2 or off + 2 * (nsec + 1) > FIXUP_STRIDE - 2:
        return raw, 3
    check = raw[off : off + 2]
    buf = bytearray(raw)
    for i in range(1, nsec + 1):
        end = i * FIXUP_STRIDE
        if raw[end - 2 : end] != check:
            return raw, 4
        buf[end - 2 : end] = raw[off + 2 * i : off + 2 * i + 2]
    return bytes(buf), 0


PROBLEMS = {
    2: "bad record magic (not FILE)",
    3: "invalid update sequence array",
    4: "update sequence mismatch (torn or corrupt sector)",
}
BROKEN = 5  # mft_scan's code for a record whose attribute chain runs past it
BROKEN_CHAIN = "attribute chain runs past the record (bad attribute length)"


def walk_attributes(
    flat: np.ndarray, rs: int, rows: np.ndarray, start: np.ndarray, limit: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Attribute rows (record row, byte index into ``flat``, type, length) of records
    ``rows``, and the rows whose chain is broken."""
    found: list[tuple[np.ndarray, ...]] = []
    broken = []
    base = rows.astype(np.int64) * rs
    pos, end, live = base + start, base + limit, rows
    for _ in range(rs // s.ATTR_COMMON_SIZE + 1):
        if live.size == 0:
            break
        fits = pos + 8 <= end
        if not fits.all():
            broken.append(live[~fits])
            live, pos, end = live[fits], pos[fits], end[fits]
        head = gather(flat, pos, 8)  # type and length in one read
        atype = (head & 0xFFFFFFFF).astype(np.int64)
        going = atype != s.ATTR_END
        live, pos, end, atype, head = live[going], pos[going], end[going], atype[going], head[going]
        length = (head >> 32).astype(np.int64)
        sane = (length >= s.ATTR_COMMON_SIZE) & (length % 8 == 0) & (pos + length <= end)
        if not sane.all():
            broken.append(live[~sane])
            live, pos, end = live[sane], pos[sane], end[sane]
            atype, length = atype[sane], length[sane]
        found.append((live, pos, atype, length))
        pos = pos + length
    broken.append(live)  # more attributes than can fit: a loop of zero progress is impossible
    if not found:
        empty = np.zeros(0, np.int64)
        return (empty, empty, empty, empty), distinct(np.concatenate(broken))
    arow, apos, atype, alen = (np.concatenate(col) for col in zip(*found, strict=True))
    return (arow, apos, atype, alen), distinct(np.concatenate(broken))


def scan_window(
    buf: np.ndarray,
    first: int,
    dtype: np.dtype,
    cols: Columns,
    disk_offsets: np.ndarray,
    numbers: np.ndarray | None = None,
    want_attributes: bool = False,
) -> Attributes | None:
    """Scan the records ``first``..``first + len(buf)`` held in ``buf`` into ``cols`` (or, when
    ``numbers`` is given, the records of those numbers, one per row of ``buf``).

    With ``want_attributes``, returns every attribute of the records in use, for callers
    that read more of them (None otherwise).  The C kernel ``mft_scan`` finds the rows when
    it is built; ``numpy_rows`` is its reference (``STRATA_BACKEND=python``)."""
    n = buf.shape[0]
    number = first + np.arange(n, dtype=np.int64) if numbers is None else numbers
    window = slice(first, first + n) if numbers is None else number
    native = mft_scan is not None and buf.flags.c_contiguous and buf.flags.writeable
    rows = native_rows(buf, want_attributes) if native else numpy_rows(buf, dtype, want_attributes)
    _store(rows, buf, number, window, dtype, cols, disk_offsets)
    if not want_attributes:
        return None
    return Attributes(rows.attrs[:, 0], rows.attrs[:, 1], rows.attrs[:, 2], rows.attrs[:, 3])


class ScanRows(NamedTuple):
    """What a window's scan finds, per record row of the window and per attribute (int64
    tables whose first column is the record row; attribute order is step-major: every
    record's first attribute, then every record's second, as the walk goes)."""

    code: np.ndarray  # per record: 0, PROBLEMS' codes, or BROKEN
    live: np.ndarray  # per record: in use, its attribute chain whole
    attrs: np.ndarray  # row, byte index into the window, type, length (when asked for)
    si: np.ndarray  # row, 4 times, attributes, security id ($STANDARD_INFORMATION)
    fn: np.ndarray  # row, parent reference, namespace, name's byte index, its length
    sizes: np.ndarray  # row, unnamed $DATA size
    ads: np.ndarray  # row, byte index, length, non-resident, value length (named $DATA)
    reparse: np.ndarray  # row, reparse tag


ROW_WIDTHS = (4, 7, 5, 2, 5, 2)  # of attrs, si, fn, sizes, ads, reparse


def native_rows(buf: np.ndarray, want_attributes: bool) -> ScanRows:
    """``numpy_rows`` by the C kernel, in one pass over each record."""
    assert mft_scan is not None
    code, live, *tables = mft_scan(buf, buf.shape[1], want_attributes)
    shaped = (
        np.frombuffer(t, np.int64).reshape(-1, w) for t, w in zip(tables, ROW_WIDTHS, strict=True)
    )
    return ScanRows(np.frombuffer(code, np.int8), np.frombuffer(live, np.bool_), *shaped)


def numpy_rows(buf: np.ndarray, dtype: np.dtype, want_attributes: bool) -> ScanRows:
    """The reference of ``mft_scan``: the window fixed up in place and walked, every step
    over all its records at once."""
    rs = buf.shape[1]
    ok, code = apply_fixups(buf, dtype)
    head = buf.view(dtype)[:, 0]
    in_use = ok & (head["flags"].astype(np.int64) & s.RECORD_IN_USE != 0)
    limit = np.minimum(head["bytes_in_use"].astype(np.int64), rs)
    start = head["attrs_offset"].astype(np.int64)
    in_use &= (start >= s.RECORD_HEADER_SIZE) & (start < limit)
    rows = np.flatnonzero(in_use)
    flat = buf.reshape(-1)
    (arow, apos, atype, alen), broken = walk_attributes(flat, rs, rows, start[rows], limit[rows])
    code[broken] = BROKEN
    in_use[broken] = False
    live = in_use[arow]
    arow, apos, atype, alen = arow[live], apos[live], atype[live], alen[live]
    attrs = np.stack([arow, apos, atype, alen], axis=1) if want_attributes else _rows(4)
    keep = WANTED[np.minimum(atype >> 4, WANTED.size - 1)] & (atype & 0xF == 0)
    values = _attribute_rows(flat, arow[keep], apos[keep], atype[keep], alen[keep])
    return ScanRows(code, in_use, attrs, *values)


def _rows(width: int) -> np.ndarray:
    return np.zeros((0, width), np.int64)


def _store(
    rows: ScanRows,
    buf: np.ndarray,
    number: np.ndarray,
    window: slice | np.ndarray,
    dtype: np.dtype,
    cols: Columns,
    disk_offsets: np.ndarray,
) -> None:
    """A window's rows into ``cols``: its records' header fields, each value scattered to the
    record that owns it (the base record of an extension record), the problems."""
    head = buf.view(dtype)[:, 0]
    flags = head["flags"].astype(np.int64)
    code = rows.code
    for r in np.flatnonzero((code >= 2) & (code <= 4) & (flags & s.RECORD_IN_USE != 0)):
        cols.problems.append(RecordProblem(int(number[r]), int(disk_offsets[r]), PROBLEMS[code[r]]))
    for r in np.flatnonzero(code == BROKEN):
        cols.problems.append(RecordProblem(int(number[r]), int(disk_offsets[r]), BROKEN_CHAIN))
    base = head["base_record"].astype(np.int64) & s.REF_RECORD_MASK
    owner_of = np.where(base != 0, base, number)
    cols.set("flags", window, np.where(rows.live, flags, 0))
    cols.set("sequence", window, head["sequence"])
    cols.set("base", window, base)
    cols.set("links", window, head["link_count"])
    flat = buf.reshape(-1)
    if len(rows.si):
        cols.scatter("si", owner_of[rows.si[:, 0]], rows.si[:, 1:])
    if len(rows.fn):
        fn = rows.fn
        named = np.stack([owner_of[fn[:, 0]], fn[:, 1], fn[:, 2]], axis=1)
        cols.add_names(named, *_utf8_names(flat, fn[:, 3], fn[:, 4]))
    if len(rows.sizes):
        cols.scatter("size", owner_of[rows.sizes[:, 0]], rows.sizes[:, 1])
    for row, pos, length, nonres, vlen in rows.ads.tolist():
        named = _named_stream(flat, pos, length, bool(nonres), vlen)
        if named is not None:
            cols.ads.append((int(owner_of[row]), *named))
    if len(rows.reparse):
        cols.scatter("reparse", owner_of[rows.reparse[:, 0]], rows.reparse[:, 1])


WANTED = np.zeros(s.REPARSE_POINT // 16 + 2, bool)  # by type code / 16; the last slot: others
WANTED[[t // 16 for t in (s.STANDARD_INFORMATION, s.FILE_NAME, s.DATA, s.REPARSE_POINT)]] = True


def _attribute_rows(
    flat: np.ndarray, arow: np.ndarray, apos: np.ndarray, atype: np.ndarray, alen: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The si, fn, sizes, ads and reparse tables of ``ScanRows`` from the kept attributes."""
    nonres = flat[apos + 8] != 0
    resident = ~nonres & (alen >= s.ATTR_RESIDENT_SIZE)
    header = np.where(resident, apos, 0)  # only read fields the attribute has room for
    vfield = gather(flat, header + 16, 8)  # value length (4 bytes), value offset (2)
    vlen = np.where(resident, vfield & 0xFFFFFFFF, 0).astype(np.int64)
    voff = np.where(resident, (vfield >> 32) & 0xFFFF, 0).astype(np.int64)
    resident &= voff + vlen <= alen
    value = apos + voff
    si_rows, fn_rows, size_rows, reparse_rows = _rows(7), _rows(5), _rows(2), _rows(2)

    si = np.flatnonzero(resident & (atype == s.STANDARD_INFORMATION) & (vlen >= 48))
    if si.size:
        v = value[si]
        has_id = vlen[si] >= 56
        if has_id.all() and not (v & 7).any():  # usual: 56 bytes as seven u64, one gather
            words = flat.view("<u8")[(v // 8)[:, None] + np.arange(7)]
            table = words[:, :5].astype(np.int64)
            table[:, 4] &= 0xFFFFFFFF
            secid = (words[:, 6] >> 32).astype(np.int64)
        else:
            table = np.stack([gather(flat, v + 8 * k, 8) for k in range(4)], axis=1)
            table = np.concatenate([table.astype(np.int64), gather(flat, v + 32, 4)[:, None]], 1)
            secid = gather(flat, np.where(has_id, v + 52, v), 4)
        si_rows = np.concatenate([arow[si, None], table, np.where(has_id, secid, 0)[:, None]], 1)

    fn = np.flatnonzero(resident & (atype == s.FILE_NAME) & (vlen >= s.FILE_NAME_SIZE))
    if fn.size:
        v = value[fn]
        nlen = flat[v + 64].astype(np.int64)
        fits = s.FILE_NAME_SIZE + 2 * nlen <= vlen[fn]
        fn, v, nlen = fn[fits], v[fits], nlen[fits]
        namespace = flat[v + 65].astype(np.int64)
        named = namespace != s.NAMESPACE_DOS  # the 8.3 alias of a name listed beside it
        fn, v, nlen, namespace = fn[named], v[named], nlen[named], namespace[named]
        parent = gather(flat, v, 8).astype(np.int64)
        fn_rows = np.stack([arow[fn], parent, namespace, v + s.FILE_NAME_SIZE, nlen], axis=1)

    data = atype == s.DATA
    name_len = np.where(data, flat[apos + 9], 0)
    first_extent = data & nonres & (alen >= s.ATTR_NONRESIDENT_SIZE)
    first_extent &= gather(flat, np.where(first_extent, apos + 16, apos), 8) == 0
    sized = np.flatnonzero(data & (name_len == 0) & (resident | first_extent))
    if sized.size:
        nr = nonres[sized]
        big = gather(flat, np.where(nr, apos[sized] + 48, apos[sized]), 8).astype(np.int64)
        size_rows = np.stack([arow[sized], np.where(nr, big, vlen[sized])], axis=1)

    ads = np.flatnonzero(data & (name_len > 0) & (resident | first_extent))
    ads_rows = np.stack([arow[ads], apos[ads], alen[ads], nonres[ads], vlen[ads]], axis=1)

    rp = np.flatnonzero(resident & (atype == s.REPARSE_POINT) & (vlen >= 8))
    if rp.size:
        reparse_rows = np.stack([arow[rp], gather(flat, value[rp], 4)], axis=1)
    return tuple(t.astype(np.int64) for t in (si_rows, fn_rows, size_rows, ads_rows, reparse_rows))


_NUL16, _NUL16_SPAN = b"\0\0", np.array([0, 2], np.int64)


def _utf8_names(
    flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[bytes, np.ndarray]:
    """UTF-16 names at ``starts`` (``lengths`` code units each) as UTF-8, each followed by
    NUL, converted with one call; and each name's bytes."""
    if starts.size == 0:
        return b"", np.zeros(0, np.uint16)
    # The names' code units and a NUL after each, cut out by the join_spans kernel (the
    # numpy gather it replaces took 30-45 ms of a 200 000-record scan, this 7-10 ms).
    raw = join_spans(
        [
            (flat, np.stack((starts, 2 * lengths), axis=1)),
            (_NUL16, np.tile(_NUL16_SPAN, (starts.size, 1))),
        ]
    )
    codes = np.frombuffer(raw, "<u2")
    if int(codes.max()) < 0x80:  # ASCII: a code unit is a byte
        return codes.astype(np.uint8).tobytes(), lengths.astype(np.uint16)
    text = raw.decode("utf-16-le", "surrogatepass").encode("utf-8", "surrogatepass")
    ends = np.flatnonzero(np.frombuffer(text, np.uint8) == 0)
    if ends.size == starts.size:  # no name holds NUL: the NULs end the names
        return text, (ends - np.concatenate(([-1], ends[:-1])) - 1).astype(np.uint16)
    names = [
        flat[a : a + 2 * n]
        .tobytes()
        .decode("utf-16-le", "surrogatepass")
        .encode("utf-8", "surrogatepass")
        for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)
    ]
    return b"".join(n + b"\0" for n in names), np.array([len(n) for n in names], np.uint16)


def _named_stream(
    flat: np.ndarray, pos: int, length: int, nonres: bool, vlen: int
) -> tuple[str, int] | None:
    name_len, name_off = int(flat[pos + 9]), int(flat[pos + 10]) | int(flat[pos + 11]) << 8
    if name_off + 2 * name_len > length:
        return None  # the name runs past its attribute: no stream to show
    raw = flat[pos + name_off : pos + name_off + 2 * name_len].tobytes()
    size = int(flat[pos + 48 : pos + 56].view("<u8")[0]) if nonres else vlen
    return raw.decode("utf-16-le", "surrogatepass"), size
