"""SIGKILL an ingest-and-commit at 20 random moments: no half-written version, verify clean,
a rerun succeeds, and gc reclaims what the killed runs left behind."""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from strata.cli import main as cli_main
from strata.errors import StrataError, SystemIOError
from strata.ops.store import verify_store
from strata.store import Store, packs
from strata.store.db import connect, transaction

from support.store_tools import MiB, ingest_cmd, physical_copies, run_ingest
from support.tools import result_of, strata_json

KILLS = 20
# Each killed run ingests CRASH_MIB of mixed data (make test); the benchmark-sized
# acceptance run is STRATA_STORE_CRASH_MIB=1024.
CRASH_MIB = int(os.environ.get("STRATA_STORE_CRASH_MIB", "32"))
PIECE = 8 * MiB


def seeds_for(run: int) -> list[int]:
    return [1000 * run + i for i in range(max(1, CRASH_MIB * MiB // PIECE))]


def killed_run(root: Path, run: int, delay: float) -> tuple[int, list[str]]:
    """Start the ingest, wait until it has opened the store, kill it ``delay`` s later.

    A run that finished before the kill is not a crash: it is repeated (as a new version
    of the same data) with half the delay, so every one of the KILLS lands in a live run.
    """
    while True:
        proc = subprocess.Popen(
            ingest_cmd(root, "crash", f"v{run}", seeds_for(run)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        phases = [proc.stdout.readline().strip()]
        assert phases == ["open"], proc.stderr.read() if proc.stderr else ""
        time.sleep(delay)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        if not finished:
            return run, phases + out.split()
        run += 1000
        delay /= 2


def timed_run(root: Path) -> float:
    """Seconds from the helper opening the store to its exit, for a complete run."""
    proc = subprocess.Popen(
        ingest_cmd(root, "crash", "v0", seeds_for(0)), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    opened = time.monotonic()
    assert proc.wait() == 0
    return time.monotonic() - opened


def check_consistent(root: Path, cli: bool = True) -> dict:
    """Verify (the CLI, or the same verb in-process to keep make test short)."""
    report = (
        result_of(strata_json("store", "verify", "--store", root)) if cli else verify_store(root)
    )
    assert report["clean"], report["problems"]
    with Store(root) as store:
        for version in store.catalog.versions("crash"):
            if version["state"] == "deployable":
                assert version["manifest"] and version["logical_size"] == CRASH_MIB * MiB
                assert store.manifest_path(bytes.fromhex(version["manifest"])).exists()
            else:
                assert version["state"] in ("packaging", "finalizing")
                assert version["manifest"] is None
    return report


def test_sigkill_ingest_at_random_moments(tmp_path: Path) -> None:
    root = tmp_path / "s"
    Store.init(root).close()
    work = timed_run(root)
    rng = random.Random(20)
    landed: dict[str, int] = {}
    for number in range(1, KILLS + 1):
        run, phases = killed_run(root, number, rng.uniform(0, work))
        landed[phases[-1]] = landed.get(phases[-1], 0) + 1
        check_consistent(root, cli=number % 4 == 0)
        rerun = run_ingest(root, "crash", f"v{run}", seeds_for(run))
        assert rerun.returncode == 0, rerun.stderr
        assert rerun.stdout.split()[-1] in ("committed", "already-done")
    print("kills landed after phase:", landed)
    before = check_consistent(root)
    reclaimable = before["orphan_bytes"] + before["unindexed_pack_bytes"]
    print("reclaimable before gc:", reclaimable, "bytes")
    gc = result_of(strata_json("store", "gc", "--store", root))
    assert gc["pack_bytes_freed"] >= reclaimable
    after = check_consistent(root)
    assert after["orphan_chunks"] == after["unindexed_pack_bytes"] == 0
    assert after["chunks_checked"] == before["chunks_checked"] - before["orphan_chunks"]
    copies = physical_copies(root)
    assert max(copies.values()) == 1 and len(copies) == after["chunks_checked"]
    with Store(root) as store:
        states = [v["state"] for v in store.catalog.versions("crash")]
    assert set(states) == {"deployable"} and len(states) >= KILLS + 1


def _committed_chunks(root: Path) -> int:
    """Chunk rows another process would see (only committed ones, WAL isolation)."""
    with sqlite3.connect(root / "catalog.db") as other:
        return int(other.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])


def test_flush_commits_rows_only_after_the_pack_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index rows go in while the pack is fsynced, but commit after it: at the moment
    the fsync runs, no row of the flush is visible; when the fsync fails, none ever is (a
    second fsync may succeed after the kernel dropped the pages), and the store verifies
    clean."""
    seen: list[int] = []

    def watching_fsync(fd: int) -> None:
        seen.append(_committed_chunks(tmp_path / "s"))
        real_fsync(fd)

    real_fsync = os.fsync
    with Store.init(tmp_path / "s") as store:
        before = _committed_chunks(tmp_path / "s")
        monkeypatch.setattr(packs.os, "fsync", watching_fsync)
        store.put_many([b"chunk %d" % i * 50 for i in range(300)], level=1)
        store.flush()
        assert seen and set(seen) == {before}
        assert _committed_chunks(tmp_path / "s") == before + 300

        def failing_fsync(fd: int) -> None:
            raise OSError(errno.EIO, "injected fsync failure")

        monkeypatch.setattr(packs.os, "fsync", failing_fsync)
        store.put_many([b"never durable %d" % i * 50 for i in range(300)], level=1)
        with pytest.raises(OSError, match="injected"):
            store.flush()
        monkeypatch.undo()
        with pytest.raises(StrataError, match="earlier write or fsync"):
            store.flush()
        assert _committed_chunks(tmp_path / "s") == before + 300
        with pytest.raises(StrataError, match="earlier write or fsync"):
            store.close()
    assert _committed_chunks(tmp_path / "s") == before + 300
    report = verify_store(tmp_path / "s")
    assert report["clean"], report["problems"]


def test_a_failed_pack_write_commits_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack write that fails (a full disk) fails the put or the flush, and every later flush
    and the close: no index row ever points at frames that are not in the pack, and the
    store verifies clean (the pack's bytes are unindexed, for gc)."""

    def full_disk(fd: int, frames: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "injected: no space left on device")

    root = tmp_path / "s"
    store = Store.init(root)
    store.put(b"committed before the failure")
    store.flush()
    monkeypatch.setattr(packs, "_write_frames", full_disk)
    with pytest.raises(OSError, match="injected"):
        store.put_many([b"lost %d" % i * 40 for i in range(300)], level=1)
        store.flush()
    monkeypatch.undo()
    with pytest.raises(StrataError, match="earlier write or fsync"):
        store.flush()
    with pytest.raises(StrataError, match="earlier write or fsync"):
        store.close()
    assert _committed_chunks(root) == 1
    with Store(root) as again:
        assert again.put(b"after the failure")
    assert _committed_chunks(root) == 2
    report = verify_store(root)
    assert report["clean"], report["problems"]


def test_a_full_disk_is_a_system_io_error_naming_the_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Exit 11 with the file, whether the failed write itself or a later flush reports it."""

    def full_disk(fd: int, frames: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    image = tmp_path / "os.raw"
    image.write_bytes(random.Random(1).randbytes(4 * MiB))
    root = tmp_path / "s"
    Store.init(root).close()
    monkeypatch.setattr(packs, "_write_frames", full_disk)
    code = cli_main.run(["os", "import", "w", str(image), "--version", "1", "--store", str(root)])
    err = capsys.readouterr().err
    assert code == SystemIOError.exit_code, err
    assert re.search(rf"pack {re.escape(str(root))}/packs/\w+\.pack: .*No space left", err), err


def test_a_full_catalog_is_a_system_io_error_naming_it(tmp_path: Path) -> None:
    conn = connect(tmp_path / "c.db", create=True)
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    rows = ((str(i), "x" * 1000) for i in range(100))
    full = pytest.raises(SystemIOError, match=r"c\.db: database or disk is full")
    with full, transaction(conn):
        conn.executemany("INSERT INTO meta VALUES (?, ?)", rows)
    assert not conn.in_transaction
    assert conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 1
