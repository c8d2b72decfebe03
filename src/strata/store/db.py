"""The store's SQLite database: chunk index and layer catalog in one WAL file.

References: SQLite WAL (https://sqlite.org/wal.html), PRAGMA synchronous=FULL (a commit is
durable when COMMIT returns), BEGIN IMMEDIATE (writers queue on busy_timeout instead of
failing mid-transaction); "Read-Only Databases" in wal.html and the URI parameters ``mode=ro``
and ``immutable`` (https://sqlite.org/uri.html) for a catalog the user cannot write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from strata.errors import Conflict, CorruptImage, SystemIOError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 120.0
# Result codes (the low byte of an extended code) of the system refusing a read or write.
SYSTEM_CODES = frozenset(
    (
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
    )
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(
    id BLOB PRIMARY KEY,
    pack TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    raw_length INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks(pack, offset);
CREATE TABLE IF NOT EXISTS layers(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('os', 'platform', 'app')),
    os_layer INTEGER REFERENCES layers(id),
    description TEXT NOT NULL DEFAULT '',
    icon BLOB,
    icon_type TEXT,
    platform_types TEXT NOT NULL DEFAULT '[]',
    purpose TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions(
    id INTEGER PRIMARY KEY,
    layer INTEGER NOT NULL REFERENCES layers(id),
    name TEXT NOT NULL,
    base INTEGER REFERENCES versions(id),
    state TEXT NOT NULL
        CHECK (state IN ('packaging', 'finalizing', 'deployable', 'failed')),
    manifest BLOB,
    logical_size INTEGER,
    stored_size INTEGER,
    description TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (layer, name),
    CHECK ((state = 'deployable') = (manifest IS NOT NULL))
);
CREATE TABLE IF NOT EXISTS images(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    template TEXT NOT NULL DEFAULT '{}',
    manifest BLOB NOT NULL,
    logical_size INTEGER,
    stored_size INTEGER,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history(
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    operation TEXT NOT NULL,
    layer TEXT,
    version TEXT,
    image TEXT,
    comment TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE TRIGGER IF NOT EXISTS history_append_only_u BEFORE UPDATE ON history
BEGIN SELECT RAISE(ABORT, 'the audit history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS history_append_only_d BEFORE DELETE ON history
BEGIN SELECT RAISE(ABORT, 'the audit history is append-only'); END;
"""


def connect(
    path: Path, create: bool, any_thread: bool = False, readonly: bool = False
) -> sqlite3.Connection:
    """``any_thread``: the connection may be used from a thread other than its creator's
    (never from two at once; SQLite here is built serialized anyway). ``readonly``: a
    connection that never writes, so it opens a catalog the user cannot write."""
    try:
        if readonly:
            conn = _open_readonly(path, any_thread)
            _check_schema(conn, path)
            return conn
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=not any_thread
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        if create:
            with transaction(conn):
                for statement in _statements(SCHEMA):
                    conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
        _check_schema(conn, path)
    except sqlite3.DatabaseError as e:
        refused = system_error(e, path)
        if refused is not None:
            raise refused from e
        raise CorruptImage(path=path, structure="catalog database", problem=str(e)) from e
    return conn


def system_error(e: sqlite3.Error, path: object) -> SystemIOError | None:
    """``e`` as the system refusing a read or write of ``path`` (a full disk, an I/O
    error, no permission), or None when it is something else."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in SYSTEM_CODES:
        return None
    return SystemIOError(what=f"{path}: {e}")


def _path_of(conn: sqlite3.Connection) -> str:
    try:
        return str(conn.execute("PRAGMA database_list").fetchone()[2])
    except sqlite3.Error:
        return "catalog database"


def _open_readonly(path: Path, any_thread: bool) -> sqlite3.Connection:
    uri = Path(path).resolve().as_uri()
    try:
        return _sqlite_ro(f"{uri}?mode=ro", any_thread)
    except sqlite3.OperationalError as e:
        wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
        if wal.exists() and wal.stat().st_size and not shm.exists():
            raise SystemIOError(
                what=f"{wal}: holds commits not yet in {path}, which a read-only open cannot "
                f"replay without {shm.name}: open the store once with write access"
            ) from e
        if e.sqlite_errorname != "SQLITE_READONLY_DIRECTORY":
            raise
    # No -shm exists and none can be made beside the catalog, so no connection has it open
    # and (no -wal holding commits, above) the file holds every commit: the ``immutable``
    # open reads the file alone, without WAL or locks.
    return _sqlite_ro(f"{uri}?mode=ro&immutable=1", any_thread)


def _sqlite_ro(uri: str, any_thread: bool) -> sqlite3.Connection:
    """The connection, opened now: SQLite opens the file on the first statement."""
    conn = sqlite3.connect(
        uri,
        uri=True,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,
        check_same_thread=not any_thread,
    )
    try:
        conn.execute("PRAGMA schema_version").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _statements(script: str) -> list[str]:
    out, current = [], ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None or row[0] != str(SCHEMA_VERSION):
        raise CorruptImage(
            path=path,
            structure="catalog database",
            problem=f"schema version {row[0] if row else None}, expected {SCHEMA_VERSION}",
            field="meta.schema",
        )


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT; a lock that stays busy past the timeout is a Conflict.
    Opened inside another transaction, it is part of that one (which commits or rolls back
    the whole)."""
    if conn.in_transaction:
        yield conn
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        raise system_error(e, _path_of(conn)) or Conflict(what=f"catalog is busy: {e}") from e
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as e:
        if conn.in_transaction:  # SQLite may have rolled back already (a full disk)
            conn.execute("ROLLBACK")
        refused = system_error(e, _path_of(conn)) if isinstance(e, sqlite3.Error) else None
        if refused is not None:
            raise refused from e
        raise
