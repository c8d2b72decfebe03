"""A listing's rows kept as columns, and the text and JSON written from them.

``strata fs ls`` builds a ``Table`` per volume (``ops.fs``); the text output formats its
sizes and times as byte matrices (``textcols``) and joins each line's parts with the
``join_spans`` kernel, the JSON output writes each row's JSON text straight from the
columns, and only the API gets a dict per row.
"""

from __future__ import annotations

import bisect
import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str  # type: ignore[attr-defined]
from typing import Any, Protocol, TextIO, overload

import numpy as np

from strata.native import join_spans
from strata.ops import textcols as tc


class Gathered:
    """A column whose rows are rows of a bigger one: row ``i`` is ``source[at[i]]`` (a
    listing's rows are names, its tables are by record).  Rows are gathered a slice at a
    time, as the output goes, never all at once."""

    def __init__(self, source: np.ndarray, at: np.ndarray) -> None:
        self.source = source
        self.at = at

    def __len__(self) -> int:
        return len(self.at)

    @overload
    def __getitem__(self, rows: int) -> Any: ...
    @overload
    def __getitem__(self, rows: slice) -> np.ndarray: ...
    def __getitem__(self, rows: int | slice) -> Any:
        return self.source[self.at[rows]]


class Paths(Protocol):
    """A path column: a list of str, or rows whose paths are made a slice at a time (and
    may offer ``lines(lo, hi)``: their UTF-8, each followed by a newline)."""

    def __len__(self) -> int: ...
    def __getitem__(self, rows: slice) -> list[str]: ...


IntColumn = list[int] | np.ndarray | Gathered
TimeColumns = tuple[IntColumn, IntColumn, IntColumn]


class Labels:
    """A column of a few distinct strings (an entry's type): a code per row into ``names``."""

    def __init__(self, codes: np.ndarray, names: list[str]) -> None:
        self.codes = codes
        self.names = names

    @classmethod
    def of(cls, values: Sequence[str]) -> Labels:
        names = list(dict.fromkeys(values))
        code = {name: i for i, name in enumerate(names)}
        return cls(np.array([code[v] for v in values], np.intp), names)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, row: int) -> str:
        return self.names[self.codes[row]]

    def __setitem__(self, row: int, name: str) -> None:
        if name not in self.names:
            self.names.append(name)
        self.codes[row] = self.names.index(name)

    def between(self, lo: int = 0, hi: int | None = None) -> list[str]:
        """The strings of rows ``lo:hi``."""
        return np.array(self.names, object)[self.codes[lo:hi]].tolist()


@dataclass
class Table:
    """Listing rows as columns, row ``i`` across them, sorted by path.

    The text and JSON outputs are built from the columns, a batch of rows at a time; ``rows()``
    makes dicts for the API.  A 200 000-file listing built as dicts first took 0.7 s and
    280 MB before a line was printed, and 1.5 s and 330 MB as JSON.  A column may be
    ``Gathered`` and the paths made a slice at a time (a full NTFS listing's are): a batch's
    values are made when it is written.
    """

    path: Paths
    kind: Labels  # a list of str is made into Labels
    size: IntColumn
    flags: IntColumn  # file attribute bits; ``names_of`` spells them
    names_of: Callable[[int], list[str]]
    filetimes: TimeColumns | np.ndarray | None = None  # FILETIMEs of TIME_FIELDS (NTFS), or (n, 3)
    stamps: Callable[[int], list[str | None]] | None = None  # else ISO 8601 of TIME_FIELDS[k]
    more: dict[str, list[Any] | np.ndarray | Gathered] = field(default_factory=dict)  # every row
    sparse: dict[int, dict[str, Any]] = field(default_factory=dict)  # fields some rows have
    _spelled: dict[int, list[str]] = field(default_factory=dict)
    _stamped: dict[int, list[str | None]] = field(default_factory=dict)
    _sparse_rows: list[int] | None = None  # sorted keys of ``sparse``, once output starts

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Labels):
            self.kind = Labels.of(self.kind)
        if isinstance(self.filetimes, np.ndarray):  # (n, 3): a column each
            self.filetimes = (self.filetimes[:, 0], self.filetimes[:, 1], self.filetimes[:, 2])

    def __len__(self) -> int:
        return len(self.path)

    def times(self, k: int, lo: int = 0, hi: int | None = None) -> list[str | None]:
        """ISO 8601 text of TIME_FIELDS[k] for rows ``lo:hi`` (None where there is none)."""
        if self.filetimes is None:
            assert self.stamps is not None
            if k not in self._stamped:  # given whole: made once, however many batches
                self._stamped[k] = self.stamps(k)
            return self._stamped[k][lo:hi]
        matrix, valid = self._stamp_matrix(k, lo, hi)
        text = tc.decoded(matrix)
        return [s if ok else None for s, ok in zip(text, valid.tolist(), strict=True)]

    def _stamp_matrix(self, k: int, lo: int, hi: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The ISO 8601 byte matrix of FILETIME column ``k``, rows ``lo:hi``, and which rows
        hold a time."""
        assert self.filetimes is not None
        return tc.stamps_to_iso(np.asarray(self.filetimes[k][lo:hi]))

    def attributes(self) -> list[list[str]]:
        """Each row's attribute names; rows with the same bits share one list."""
        flags = _as_list(self.flags[0 : len(self)])
        spelled = self._spell(flags)
        return [spelled[bits] for bits in flags]

    def _spell(self, bits: Iterable[int]) -> dict[int, list[str]]:
        """The names of attribute ``bits`` (every value spelled once, whatever the batch)."""
        for value in set(bits) - self._spelled.keys():
            self._spelled[value] = self.names_of(value)
        return self._spelled

    def _flag_codes(self, lo: int, hi: int) -> tuple[list[int], np.ndarray]:
        """The distinct attribute bits of rows ``lo:hi``, and each row's index among them."""
        distinct, codes = tc.distinct_codes(np.asarray(self.flags[lo:hi], np.int64))
        return distinct.tolist(), codes

    def rows(self) -> list[dict[str, Any]]:
        n = len(self)
        columns = {
            "path": self.path[0:n],
            "type": self.kind.between(),
            "size": _as_list(self.size[0:n]),
            **{name: self.times(k) for k, name in enumerate(TIME_FIELDS)},
            "attributes": self.attributes(),
            **{name: _as_list(values[0:n]) for name, values in self.more.items()},
        }
        names = list(columns)
        values = zip(*columns.values(), strict=True)
        rows = [dict(zip(names, row, strict=True)) for row in values]
        for i, extra in self.sparse.items():
            rows[i].update(extra)
        return rows

    def json_items(self, batch: int = 2048) -> Iterator[str]:
        """``rows()`` as the JSON text ``json.dumps`` writes for them, ``batch`` rows at a
        time, each run joined by ``", "`` as in a list.  A batch's strings are most of the
        output's memory: 200 000 rows held 10 MB at once in batches of 8192, 3 MB in
        batches of 2048, in the same time (medians of 7 runs, 0.38-0.41 s each)."""
        kinds = {kind: _json(kind) for kind in self.kind.names}
        spelled: dict[int, str] = {}
        for lo in range(0, len(self), batch):
            hi = min(len(self), lo + batch)
            flags = _as_list(self.flags[lo:hi])
            for bits, names in self._spell(flags).items():
                spelled.setdefault(bits, _json(names))
            created, modified, accessed = (self._json_times(k, lo, hi) for k in range(3))
            tails = self._json_tails(lo, hi)
            yield ", ".join(
                f'{{"path": {_json_str(path)}, "type": {kinds[kind]}, "size": {size}, '
                f'"created": {c}, "modified": {m}, "accessed": {a}, '
                f'"attributes": {spelled[bits]}{tail}}}'
                for path, kind, size, c, m, a, bits, tail in zip(
                    self.path[lo:hi],
                    self.kind.between(lo, hi),
                    _as_list(self.size[lo:hi]),
                    created,
                    modified,
                    accessed,
                    flags,
                    tails,
                    strict=True,
                )
            )

    def _json_times(self, k: int, lo: int, hi: int) -> list[str]:
        """``times(k, lo, hi)`` as JSON text: each FILETIME's ISO text quoted in its byte
        matrix, not string by string."""
        if self.filetimes is None:
            return ["null" if s is None else f'"{s}"' for s in self.times(k, lo, hi)]
        matrix, valid = self._stamp_matrix(k, lo, hi)
        quoted = np.full((matrix.shape[0], matrix.shape[1] + 2), QUOTE, np.uint8)
        quoted[:, 1:-1] = matrix
        texts = tc.decoded(quoted)
        for i in np.flatnonzero(~valid).tolist():
            texts[i] = "null"
        return texts

    def _json_tails(self, lo: int, hi: int) -> list[str]:
        """The fields after ``attributes`` of rows ``lo:hi``, as JSON text."""
        columns = [_json_fields(name, values[lo:hi]) for name, values in self.more.items()]
        tails = list(map("".join, zip(*columns, strict=True))) if columns else [""] * (hi - lo)
        for i, extra in self._sparse_in(lo, hi):
            if extra:
                tails[i - lo] += ", " + _json(extra)[1:-1]
        return tails

    def _sparse_in(self, lo: int, hi: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """The rows of ``lo:hi`` that have fields of their own, without going through every
        such row of the table for each batch."""
        if self._sparse_rows is None:
            self._sparse_rows = sorted(self.sparse)
        rows = self._sparse_rows
        for i in rows[bisect.bisect_left(rows, lo) : bisect.bisect_left(rows, hi)]:
            yield i, self.sparse[i]

    def lines(self, batch: int = 8192) -> Iterator[str]:
        """The text listing, ``batch`` lines at a time (newline-terminated): type, size,
        modified time to the second, attributes, path (and `` -> target`` for a link), with
        control characters in names shown as ``\\xNN`` (``--json`` carries them as they are).
        The reference of ``text``."""
        kinds = self._kind_texts()
        for lo in range(0, len(self), batch):
            yield self._lines_between(lo, min(len(self), lo + batch), kinds)

    def _kind_texts(self) -> dict[str, str]:
        """The type column's text (padded, with the space after) of each type."""
        return {kind: f"{kind:<8} " for kind in self.kind.names}

    def _attribute_texts(self, bits: list[int]) -> list[str]:
        """The attribute column's text (padded, with the space after) of each of ``bits``."""
        spelled = self._spell(bits)
        return [f"{','.join(spelled[b]) or '-':<24} " for b in bits]

    def _lines_between(self, lo: int, hi: int, kinds: dict[str, str]) -> str:
        flags = _as_list(self.flags[lo:hi])
        spelled = dict(zip(flags, self._attribute_texts(flags), strict=True))
        out = [
            kinds[kind] + mid + spelled[bits] + path
            for kind, mid, bits, path in zip(
                self.kind.between(lo, hi),
                self._sizes_and_stamps(lo, hi),
                flags,
                printable(self.path[lo:hi]),
                strict=True,
            )
        ]
        for i, extra in self._sparse_in(lo, hi):
            if extra.get("target") is not None:
                out[i - lo] += f" -> {printable([extra['target']])[0]}"
        return "\n".join(out) + "\n"

    def text(self, batch: int = 8192) -> Iterator[bytes]:
        """``lines()`` encoded as UTF-8, each batch joined from byte columns by the
        ``join_spans`` kernel: the type and attribute labels, the size and time matrix, and
        the paths joined and encoded at once.  A 200 000-row listing's lines took 0.12-0.19 s
        as one string per row."""
        kind_texts = self._kind_texts()
        kinds = _label_table([kind_texts[kind] for kind in self.kind.names])
        for lo in range(0, len(self), batch):
            hi = min(len(self), lo + batch)
            middle, odd = self._middle(lo, hi)
            if odd.any():  # a size wider than its column: this batch row by row
                yield self._lines_between(lo, hi, kind_texts).encode()
                continue
            distinct, flag_codes = self._flag_codes(lo, hi)
            attributes = _label_table(self._attribute_texts(distinct))
            yield join_spans(
                [
                    (kinds[0], kinds[1][self.kind.codes[lo:hi]]),
                    (middle, _fixed_spans(hi - lo, middle.shape[1])),
                    (attributes[0], attributes[1][flag_codes]),
                    *self._tails(lo, hi),
                ]
            )

    def write_text(self, stream: TextIO) -> None:
        """The text listing into ``stream``: ``text()`` into its byte buffer when it writes
        UTF-8, else ``lines()``."""
        buffer = getattr(stream, "buffer", None)
        encoding = getattr(stream, "encoding", None)
        if buffer is None or not encoding or codecs.lookup(encoding).name != "utf-8":
            for lines in self.lines():
                stream.write(lines)
            return
        stream.flush()
        for chunk in self.text():
            buffer.write(chunk)

    def _tails(self, lo: int, hi: int) -> list[tuple[bytes | bytearray, np.ndarray]]:
        """Each row's path (`` -> target`` after a link's) and newline, as ``join_spans``
        columns of UTF-8: the path column's own (``columns``, or one column of ``lines``)
        when it needs no escapes, else made from its text."""
        links = [
            (i, x["target"]) for i, x in self._sparse_in(lo, hi) if x.get("target") is not None
        ]
        columns = getattr(self.path, "columns", None)
        found = columns(lo, hi) if columns is not None and not links else None
        if found is not None:
            return found
        lines = getattr(self.path, "lines", None)
        if lines is not None and not links:
            data = lines(lo, hi)
            if data.isascii() and not _has_controls(data, hi - lo):
                return [(data, _line_spans(data))]
        texts = self.path[lo:hi]
        if links:
            texts = list(texts)
            for i, target in links:
                texts[i - lo] += f" -> {target}"
        joined = "\n".join(texts) + "\n"
        data = joined.encode("ascii") if joined.isascii() else b""
        if not data or _has_controls(data, hi - lo):
            data = ("\n".join(printable(texts)) + "\n").encode()
        return [(data, _line_spans(data))]

    def _sizes_and_stamps(self, lo: int, hi: int) -> list[str]:
        """``{size:>14} {modified to the second:<19} `` of rows ``lo:hi``, built as one
        matrix."""
        matrix, odd = self._middle(lo, hi)
        middle = tc.decoded(matrix)
        for i in np.flatnonzero(odd).tolist():
            middle[i] = f"{int(self.size[lo + i]):>{SIZE_WIDTH}}{middle[i][SIZE_WIDTH:]}"
        return middle

    def _middle(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """The byte matrix of ``_sizes_and_stamps``, and which rows' sizes do not fit their
        column (left 0 in it)."""
        if self.filetimes is not None:
            stamps = tc.stamps_to_seconds(np.asarray(self.filetimes[1][lo:hi]))
        else:
            stamps = tc.seconds_of(self.times(1, lo, hi))
        sizes = np.array(self.size[lo:hi], np.int64)
        odd = (sizes < 0) | (sizes >= 10**SIZE_WIDTH)  # wider than the column: row by row
        matrix = np.full((len(sizes), SIZE_WIDTH + tc.STAMP_WIDTH + 2), tc.SPACE, np.uint8)
        matrix[:, :SIZE_WIDTH] = tc.right_aligned(np.where(odd, 0, sizes), SIZE_WIDTH)
        matrix[:, SIZE_WIDTH + 1 : -1] = stamps
        return matrix, odd


def _as_list(values: Sequence[Any] | np.ndarray) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _line_spans(data: bytes) -> np.ndarray:
    """The (start, length) rows of the newline-ended lines of ``data``."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == NEWLINE) + 1
    starts = np.concatenate(([0], ends[:-1]))
    return np.stack((starts, ends - starts), axis=1)


def _label_table(labels: list[str]) -> tuple[bytes, np.ndarray]:
    """``labels`` as UTF-8, one after another, and each one's (start, length) row."""
    encoded = [label.encode() for label in labels]
    lengths = np.array([len(e) for e in encoded], np.int64)
    return b"".join(encoded), np.stack((np.cumsum(lengths) - lengths, lengths), axis=1)


def _fixed_spans(rows: int, width: int) -> np.ndarray:
    """The (start, length) rows of a ``rows`` x ``width`` byte matrix."""
    return np.stack((np.arange(rows, dtype=np.int64) * width, np.full(rows, width, np.int64)), 1)


def _has_controls(ascii_lines: bytes, lines: int) -> bool:
    """Whether ASCII text of ``lines`` newline-ended lines holds a control character other
    than those newlines (``printable`` then escapes it)."""
    codes = np.frombuffer(ascii_lines, np.uint8)
    return np.count_nonzero(codes < 0x20) != lines or bool((codes == 0x7F).any())


# C0 and C1 controls and DEL: a name holding them (NTFS allows any but NUL and '/') would
# move the cursor, recolour the terminal or print a line of its own in the text listing.
# An unpaired surrogate (NTFS names are UTF-16 units, unchecked) cannot be written as UTF-8.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_ESCAPED = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPED.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)})


def printable(texts: list[str]) -> list[str]:
    """``texts`` with control characters shown as ``\\xNN`` and unpaired surrogates as
    ``\\uNNNN`` (a batch without any, the usual case, is returned as it is after one
    search)."""
    if not _CONTROLS.search("".join(texts)):
        return texts
    return [text.translate(_ESCAPED) for text in texts]


def _json_fields(name: str, values: Sequence[Any] | np.ndarray) -> list[str]:
    """``, "name": value`` of each of ``values`` as JSON text (integers without a call a
    value: the JSON output's rows spent 0.15 s of 0.4 s here)."""
    key = f", {_json_str(name)}: "
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return list(map(key.__add__, map(str, values.tolist())))
    return [key + _json(value) for value in _as_list(values)]


def _json(value: Any) -> str:
    """``value`` as ``json.dumps`` (and so the JSON reporter) writes it."""
    if type(value) is int:
        return str(value)
    if type(value) is str:
        return _json_str(value)
    return json.dumps(value, default=str)


TIME_FIELDS = ("created", "modified", "accessed")
SIZE_WIDTH = 14
NEWLINE, QUOTE = ord("\n"), ord('"')
