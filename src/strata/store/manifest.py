"""Manifests: a versioned description of one layer version or image, with binary tables.

References: strata manifest schema 1 (structs.MANIFEST_HEADER). Canonical bytes are the
header, canonical JSON (sorted keys, no spaces, ASCII) and each table's little-endian rows in
name order; the manifest id is the xxh3-128 of those bytes, so equal content has equal id.

Tables are numpy structured arrays of a registered schema. A schema with an ``id`` field
(16 bytes) names chunks: ``gc`` and ``verify`` follow those, nothing else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strata import jsontext
from strata.errors import CorruptImage, InvalidInput
from strata.store.ids import ZERO_ID, chunk_id
from strata.store.structs import (
    CHUNK_ROW,
    MANIFEST_HEADER,
    MANIFEST_MAGIC_BYTES,
    MANIFEST_SCHEMA,
)

SCHEMAS: dict[str, np.dtype] = {"chunks-v1": CHUNK_ROW}
ID_DTYPE = np.dtype("V16")
LIVE_BATCH_IDS = 4 << 20  # ids (64 MiB) gathered before they are merged into a LiveSet
# Field types a table may declare: little-endian integers and floats, raw bytes.
_FIELD_TYPE = re.compile(r"^(<[uif][1248]|\|[uiV]1|\|V[0-9]{1,3}|\|S[0-9]{1,3})$")
_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


class LiveSet:
    """The distinct chunk ids of many manifests (what ``gc`` keeps and ``verify`` reports
    against).  Versions of a layer share most of their chunks, so the sum of every manifest's
    ids can be many times the distinct set: ids are merged into the sorted set every
    ``batch_ids``, and memory stays the distinct set plus one batch."""

    def __init__(self, batch_ids: int | None = None) -> None:
        self._batch_ids = LIVE_BATCH_IDS if batch_ids is None else batch_ids
        self._merged = np.zeros(0, ID_DTYPE)
        self._pending: list[np.ndarray] = []
        self._pending_ids = 0

    def add(self, ids: np.ndarray) -> None:
        self._pending.append(ids)
        self._pending_ids += len(ids)
        if self._pending_ids >= self._batch_ids:
            self._merge()

    def ids(self) -> np.ndarray:
        """Every id added, sorted and distinct."""
        self._merge()
        return self._merged

    def _merge(self) -> None:
        if self._pending:
            self._merged = np.unique(np.concatenate([self._merged, *self._pending]))
            self._pending, self._pending_ids = [], 0


def register_schema(name: str, dtype: np.dtype) -> None:
    """Make a table schema known (layer code calls this at import time)."""
    dtype = np.dtype(dtype)
    if dtype.names is None:
        raise InvalidInput(f"table schema {name!r} must be a structured dtype")
    if "id" in dtype.names and dtype["id"] != ID_DTYPE:
        raise InvalidInput(f"table schema {name!r}: field 'id' must be V16")
    for field_name, kind in dtype.descr:
        if not (_FIELD_NAME.match(field_name) and _FIELD_TYPE.match(kind)):
            raise InvalidInput(
                f"table schema {name!r}: field {field_name!r} of type {kind!r} "
                "cannot be declared in a manifest"
            )
    known = SCHEMAS.get(name)
    if known is not None and known != dtype:
        raise InvalidInput(f"table schema {name!r} is already registered with another layout")
    SCHEMAS[name] = dtype


def chunk_table(offsets: Any, lengths: Any, ids: Any) -> np.ndarray:
    """A ``chunks-v1`` table from three equally long sequences (ids: 16-byte values)."""
    offsets = np.asarray(offsets, dtype="<u8")
    table = np.zeros(len(offsets), CHUNK_ROW)
    table["offset"] = offsets
    table["length"] = np.asarray(lengths, dtype="<u4")
    table["id"] = np.asarray(ids, dtype=ID_DTYPE) if len(offsets) else table["id"]
    return table


def canonical_json(value: Any) -> bytes:
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode("ascii")
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"manifest metadata is not plain JSON: {e}") from e


@dataclass
class Manifest:
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)

    def add_table(self, name: str, schema: str, rows: np.ndarray) -> None:
        dtype = SCHEMAS.get(schema)
        if dtype is None:
            raise InvalidInput(f"unknown table schema {schema!r}")
        if rows.dtype != dtype:
            rows = rows.astype(dtype)
        self.tables[name] = (schema, np.ascontiguousarray(rows))

    def table(self, name: str) -> np.ndarray:
        try:
            return self.tables[name][1]
        except KeyError as e:
            raise InvalidInput(f"manifest has no table {name!r}") from e

    def to_bytes(self) -> bytes:
        names = sorted(self.tables)
        head = canonical_json(
            {
                "kind": self.kind,
                "meta": self.meta,
                "tables": [
                    {
                        "name": n,
                        "schema": self.tables[n][0],
                        "rows": len(self.tables[n][1]),
                        "dtype": [list(field) for field in self.tables[n][1].dtype.descr],
                    }
                    for n in names
                ],
            }
        )
        parts = [MANIFEST_HEADER.pack(MANIFEST_MAGIC_BYTES, MANIFEST_SCHEMA, 0, len(head)), head]
        parts += [self.tables[n][1].tobytes() for n in names]
        return b"".join(parts)

    @property
    def id(self) -> bytes:
        return chunk_id(self.to_bytes())

    def chunk_ids(self) -> np.ndarray:
        """Distinct non-zero chunk ids named by every table with an ``id`` field."""
        columns = [
            rows["id"] for _, rows in self.tables.values() if "id" in (rows.dtype.names or ())
        ]
        if not columns:
            return np.zeros(0, ID_DTYPE)
        ids = np.unique(np.concatenate(columns))
        return ids[ids != np.frombuffer(ZERO_ID, ID_DTYPE)[0]]

    def logical_size(self) -> int:
        return int(
            sum(
                int(rows["length"].sum(dtype=np.uint64))
                for _, rows in self.tables.values()
                if _has(rows, "length")
            )
        )


def _has(rows: np.ndarray, name: str) -> bool:
    return name in (rows.dtype.names or ())


def parse(buf: bytes, where: str = "<manifest>") -> Manifest:
    """A manifest from canonical bytes; every field is checked before it is trusted."""

    def bad(problem: str, fld: str, offset: int | None = None) -> CorruptImage:
        return CorruptImage(
            path=where, structure="manifest", problem=problem, field=fld, offset=offset
        )

    if len(buf) < MANIFEST_HEADER.size:
        raise bad(f"only {len(buf)} bytes", "header", 0)
    magic, schema, _, json_len = MANIFEST_HEADER.unpack_from(buf, 0)
    if magic != MANIFEST_MAGIC_BYTES:
        raise bad(f"magic {magic!r}", "magic", 0)
    if schema != MANIFEST_SCHEMA:
        raise bad(f"schema {schema} is not {MANIFEST_SCHEMA}", "schema", 8)
    start = MANIFEST_HEADER.size
    if start + json_len > len(buf):
        raise bad(f"JSON length {json_len} runs past the end", "json_length", 12)
    head = _parse_head(buf[start : start + json_len], bad)
    manifest = Manifest(kind=head["kind"], meta=head["meta"])
    offset = start + json_len
    for entry in head["tables"]:
        dtype = _table_dtype(entry, bad)
        size = entry["rows"] * dtype.itemsize
        if offset + size > len(buf):
            raise bad(f"table {entry['name']!r} runs past the end", "tables.rows", offset)
        rows = np.frombuffer(buf, dtype, entry["rows"], offset)
        manifest.tables[entry["name"]] = (entry["schema"], rows)
        offset += size
    if offset != len(buf):
        raise bad(f"{len(buf) - offset} trailing bytes", "tables", offset)
    return manifest


def _table_dtype(entry: dict[str, Any], bad: Any) -> np.dtype:
    """The table's layout as the manifest declares it, checked against its schema when this
    process knows the schema (so verify and gc read tables of schemas they never loaded)."""
    fields = entry["dtype"]
    if not (isinstance(fields, list) and 0 < len(fields) <= 64):
        raise bad(f"table {entry['name']!r}: dtype must list 1-64 fields", "tables.dtype")
    for spec in fields:
        ok = (
            isinstance(spec, list)
            and len(spec) == 2
            and isinstance(spec[0], str)
            and isinstance(spec[1], str)
            and _FIELD_NAME.match(spec[0])
            and _FIELD_TYPE.match(spec[1])
        )
        if not ok:
            raise bad(f"table {entry['name']!r}: bad field {spec!r}"[:200], "tables.dtype")
    try:
        dtype = np.dtype([(name, kind) for name, kind in fields])
    except (TypeError, ValueError) as e:
        raise bad(f"table {entry['name']!r}: {e}", "tables.dtype") from e
    known = SCHEMAS.get(entry["schema"])
    if known is not None and known != dtype:
        raise bad(
            f"table {entry['name']!r} does not have the layout of schema {entry['schema']!r}",
            "tables.dtype",
        )
    if "id" in (dtype.names or ()) and dtype["id"] != ID_DTYPE:
        raise bad(f"table {entry['name']!r}: field 'id' must be 16 bytes", "tables.dtype")
    return dtype


def _parse_head(raw: bytes, bad: Any) -> dict[str, Any]:
    try:
        head = jsontext.parse(raw.decode("ascii"))
    except ValueError as e:  # UnicodeDecodeError is one
        raise bad(f"header JSON does not parse: {e}", "json") from e
    if not isinstance(head, dict) or set(head) != {"kind", "meta", "tables"}:
        raise bad("header JSON must hold exactly kind, meta, tables", "json")
    if not isinstance(head["kind"], str) or not isinstance(head["meta"], dict):
        raise bad("kind must be a string and meta an object", "json")
    tables = head["tables"]
    if not isinstance(tables, list):
        raise bad("tables must be a list", "json.tables")
    names = []
    for entry in tables:
        ok = (
            isinstance(entry, dict)
            and set(entry) == {"name", "schema", "rows", "dtype"}
            and isinstance(entry["name"], str)
            and isinstance(entry["schema"], str)
            and type(entry["rows"]) is int
            and entry["rows"] >= 0
        )
        if not ok:
            raise bad(f"bad table entry {entry!r}"[:200], "json.tables")
        names.append(entry["name"])
    if names != sorted(set(names)):
        raise bad("table names must be unique and sorted", "json.tables")
    return head
