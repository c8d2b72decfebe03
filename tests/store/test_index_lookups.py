"""index.present and index.locate: which of many ids the chunk index holds and where, in one
query (the ids cut out of one blob by SQL), against one lookup per id."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from strata.store import index
from strata.store.db import connect


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    db = connect(tmp_path / "catalog.db", create=True)
    rng = random.Random(5)
    rows = [(rng.randbytes(16), "p.pack", 16 + 40 * i, 40, 50) for i in range(300)]
    index.insert(db, rows)
    return db


def _one_by_one(conn: sqlite3.Connection, ids: list[bytes]) -> set[bytes]:
    query = "SELECT id FROM chunks WHERE id = ?"
    return {cid for cid in ids if conn.execute(query, (cid,)).fetchone() is not None}


def test_present_is_each_id_looked_up(conn: sqlite3.Connection) -> None:
    stored = [row[0] for row in conn.execute("SELECT id FROM chunks")]
    rng = random.Random(6)
    for count in (0, 1, 2, 17, 600):
        ids = [
            rng.choice(stored) if rng.random() < 0.5 else rng.randbytes(16) for _ in range(count)
        ]
        assert index.present(conn, ids) == _one_by_one(conn, ids)
    assert index.present(conn, stored) == set(stored)  # the last id of the blob included
    assert index.present(conn, [stored[-1]]) == {stored[-1]}


def test_locate_is_each_id_looked_up(conn: sqlite3.Connection) -> None:
    stored = [row[0] for row in conn.execute("SELECT id FROM chunks")]
    rng = random.Random(7)
    query = "SELECT pack, offset, length, raw_length FROM chunks WHERE id = ?"
    for count in (0, 1, 17, 600):
        ids = [
            rng.choice(stored) if rng.random() < 0.5 else rng.randbytes(16) for _ in range(count)
        ]
        one_by_one = {
            cid: index.Location(*row)
            for cid in ids
            if (row := conn.execute(query, (cid,)).fetchone()) is not None
        }
        assert index.locate(conn, ids) == one_by_one
    assert set(index.locate(conn, stored)) == set(stored)  # the last id of the blob included
