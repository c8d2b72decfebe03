"""put_many / get_many round trip of mixed data, streamed in pieces with bounded memory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from strata.store import ZERO_ID, Manifest, PutStats, Store

from support.store_tools import CHUNK, MiB, blocks, piece, scan_pack
from support.tools import require

ROUNDTRIP_MIB = int(os.environ.get("STRATA_STORE_ROUNDTRIP_MIB", "256"))


def test_roundtrip_mixed_data_identical_with_stats(tmp_path: Path) -> None:
    pieces = ROUNDTRIP_MIB // 8
    seeds = list(range(pieces))
    stats = PutStats()
    with Store.init(tmp_path / "s") as store:
        table = store.put_blocks(blocks(seeds), stats=stats)
        manifest = Manifest("test", {"size": ROUNDTRIP_MIB * MiB})
        manifest.add_table("chunks", "chunks-v1", table)
        mid = store.put_manifest(manifest)
        store.catalog.create_layer("os", "os")
        store.catalog.create_version("os", "v1")
        store.catalog.transition("os", "v1", "finalizing")
        store.commit_version("os", "v1", mid)
    with Store(tmp_path / "s") as store:
        table = store.get_manifest(mid).table("chunks")
        assert int(table["offset"][-1]) + CHUNK == ROUNDTRIP_MIB * MiB
        per_piece = 8 * MiB // CHUNK
        for number, seed in enumerate(seeds):
            rows = table[number * per_piece : (number + 1) * per_piece]
            got = b"".join(store.get_many(rows["id"].tolist(), rows["length"].tolist()))
            assert got == piece(seed), f"piece {number} differs"
        facts = store.stats()
    assert stats.logical_bytes == ROUNDTRIP_MIB * MiB
    assert stats.zero_bytes == ROUNDTRIP_MIB * MiB // 4
    assert (table["id"] == np.frombuffer(ZERO_ID, "V16")[0]).sum() == stats.zero_chunks
    assert stats.duplicate_chunks > 0  # the text-like quarter repeats with a 29-byte period
    assert facts["logical_bytes"] == ROUNDTRIP_MIB * MiB
    assert facts["unique_bytes"] == stats.new_bytes < facts["logical_bytes"]
    assert facts["stored_bytes"] == stats.stored_bytes < facts["unique_bytes"]
    assert facts["dedup_ratio"] > 1.5 and facts["compression_ratio"] > 1.2


def test_frames_are_standard_zstd(tmp_path: Path) -> None:
    """The zstd CLI (an independent decoder) inflates a stored frame's payload to the chunk."""
    zstd = require("zstd")
    data = piece(7, 1 * MiB)
    with Store.init(tmp_path / "s") as store:
        ids = store.put_many([data[i : i + CHUNK] for i in range(0, len(data), CHUNK)])
    want = {cid: data[i * CHUNK : (i + 1) * CHUNK] for i, cid in enumerate(ids) if cid != ZERO_ID}
    (pack,) = sorted((tmp_path / "s" / "packs").glob("*.pack"))
    raw = pack.read_bytes()
    compressed = [f for f in scan_pack(pack) if raw[f[1] + 5] == 1]
    assert compressed, "no zstd frame in the pack"
    for cid, offset, length in compressed[:8]:
        out = subprocess.run(
            [zstd, "-d", "-c"], input=raw[offset + 32 : offset + length], capture_output=True
        )
        assert out.returncode == 0 and out.stdout == want[cid]


def test_put_accepts_reused_buffers_and_numpy(tmp_path: Path) -> None:
    buf = bytearray(CHUNK)
    chunks = []

    def reuse():  # type: ignore[no-untyped-def]
        for i in range(20):
            buf[:] = piece(100 + i % 5, CHUNK)
            chunks.append(bytes(buf))
            yield memoryview(buf)

    with Store.init(tmp_path / "s") as store:
        ids = store.put_many(reuse())
        assert list(store.get_many(ids)) == chunks
        array = np.frombuffer(piece(3, CHUNK), np.uint32)
        assert store.get(store.put(array)) == array.tobytes()
        assert len(set(ids)) == 5


def test_zero_chunk_needs_length_and_is_not_stored(tmp_path: Path) -> None:
    with Store.init(tmp_path / "s") as store:
        assert store.put(bytes(CHUNK)) == ZERO_ID
        assert store.get(ZERO_ID, 4096) == bytes(4096)
        with pytest.raises(Exception, match="needs its length"):
            store.get(ZERO_ID)
    assert not list((tmp_path / "s" / "packs").glob("*.pack"))


def test_packs_roll_over_at_their_limit(tmp_path: Path) -> None:
    """A writer starts a new pack once one reaches ``pack_limit`` (the frame that crosses it
    still goes in): jobs of many frames are split there, and every index row names the pack
    and offset where a scan of the files finds the frame."""
    limit = 64 << 10
    rng = np.random.default_rng(3)
    chunks = [rng.integers(0, 256, 3000 + 7 * k, np.uint8).tobytes() for k in range(300)]
    with Store.init(tmp_path / "s", pack_limit=limit) as store:
        ids = store.put_many(chunks, level=1)
        store.flush()
        rows = store.db.execute("SELECT id, pack, offset, length FROM chunks").fetchall()
        assert b"".join(store.get_many(ids)) == b"".join(chunks)
    packs = list((tmp_path / "s" / "packs").glob("*.pack"))
    frames = {p.name: scan_pack(p) for p in packs}
    assert len(packs) >= len(b"".join(chunks)) // limit
    for p in packs:
        size, last = p.stat().st_size, frames[p.name][-1]
        if last[0] != ids[-1]:  # every pack but the open one: crossed by its last frame only
            assert last[1] < limit <= size == last[1] + last[2]
    found = {
        cid: (name, offset, length) for name, fs in frames.items() for cid, offset, length in fs
    }
    assert len(found) == len(rows) == len(chunks)
    assert {bytes(r[0]): (r[1], r[2], r[3]) for r in rows} == found
