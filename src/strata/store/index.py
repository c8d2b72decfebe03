"""The chunk index: chunk id -> (pack, offset, frame length, raw length), in SQLite.

References: strata store format 1. Rows are inserted only after the frames they name are
fsync'ed, with INSERT OR IGNORE: when two writers race on one chunk the first row wins and
the other frame becomes dead bytes that ``gc`` reclaims.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from strata.store.db import transaction


class Location(NamedTuple):
    pack: str
    offset: int
    length: int
    raw_length: int


def _by_ids(columns: str) -> str:
    """A query for ``columns`` of the rows of given ids, which travel as one blob (16 bytes
    each), cut into keys by SQL (one PRIMARY KEY lookup each): binding 500 parameters a query
    cost twice as much (1 001 ids: 0.63 -> 0.33 ms)."""
    return (
        "WITH RECURSIVE k(at) AS (SELECT 1 UNION ALL SELECT at + 16 FROM k WHERE at + 16 <= ?) "
        f"SELECT {columns} FROM k JOIN chunks ON chunks.id = substr(?, k.at, 16)"
    )


PRESENT = _by_ids("chunks.id")
LOCATE = _by_ids("chunks.id, pack, offset, length, raw_length")


def _rows(conn: sqlite3.Connection, query: str, ids: Sequence[bytes]) -> list[tuple[Any, ...]]:
    if not ids:
        return []
    blob = b"".join(ids)
    return conn.execute(query, (len(blob), blob)).fetchall()


def present(conn: sqlite3.Connection, ids: Sequence[bytes]) -> set[bytes]:
    """Those of ``ids`` (16 bytes each) the index holds."""
    return {row[0] for row in _rows(conn, PRESENT, ids)}


def locate(conn: sqlite3.Connection, ids: Sequence[bytes]) -> dict[bytes, Location]:
    """Where each of ``ids`` (16 bytes each) the index holds is stored."""
    return {row[0]: Location(*row[1:]) for row in _rows(conn, LOCATE, ids)}


def insert(
    conn: sqlite3.Connection,
    rows: Sequence[tuple[bytes, str, int, int, int]],
    before_commit: Callable[[], object] | None = None,
) -> None:
    """Add ``rows``; ``before_commit`` (the wait for the pack's fsync) runs inside the
    transaction, so no row commits before the bytes it points at are durable, and an
    error there rolls the rows back."""
    with transaction(conn):
        conn.executemany("INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)", rows)
        if before_commit is not None:
            before_commit()


def load_id_set(conn: sqlite3.Connection, table: str, ids: np.ndarray) -> None:
    """Fill a TEMP table with ``ids`` (16-byte void array) for set joins in SQL."""
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table}(id BLOB PRIMARY KEY) WITHOUT ROWID")
    conn.execute(f"DELETE FROM {table}")
    conn.executemany(
        f"INSERT OR IGNORE INTO {table} VALUES (?)", ((bytes(x),) for x in ids.tolist())
    )


def missing(conn: sqlite3.Connection, ids: np.ndarray) -> list[bytes]:
    """Those of ``ids`` the index does not hold."""
    load_id_set(conn, "want", ids)
    return [
        row[0]
        for row in conn.execute(
            "SELECT want.id FROM want LEFT JOIN chunks ON chunks.id = want.id "
            "WHERE chunks.id IS NULL"
        )
    ]


def stored_bytes(conn: sqlite3.Connection, ids: np.ndarray) -> int:
    load_id_set(conn, "want", ids)
    row = conn.execute(
        "SELECT COALESCE(SUM(length), 0) FROM chunks JOIN want ON chunks.id = want.id"
    ).fetchone()
    return int(row[0])
