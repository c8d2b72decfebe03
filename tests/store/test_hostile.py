"""Damaged and hostile stores: specific errors, bounded memory, nothing else harmed."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest
import zstandard

from strata.errors import CorruptImage, IntegrityError, NotFound, TruncatedImage
from strata.store import ZERO_ID, Manifest, Store, chunk_id

from support.store_tools import CHUNK, blocks, piece, scan_pack
from support.tools import measure, result_of, strata, strata_json

FRAME = struct.Struct("<4sBBHII16s")
SHARED = 11  # the seed both versions contain


def build(root: Path) -> dict[str, bytes]:
    """Two committed versions sharing one piece; their manifest ids."""
    mids = {}
    with Store.init(root) as store:
        store.catalog.create_layer("os", "os")
        for version, seeds in (("v1", [SHARED, 12]), ("v2", [13, SHARED])):
            store.catalog.create_version("os", version)
            store.catalog.transition("os", version, "finalizing")
            manifest = Manifest("os-layer")
            manifest.add_table("chunks", "chunks-v1", store.put_blocks(blocks(seeds, 1 << 20)))
            mids[version] = store.put_manifest(manifest)
            store.commit_version("os", version, mids[version])
    return mids


def shared_compressed_frame(root: Path) -> tuple[Path, bytes, int, int]:
    """(pack, id, offset, length) of a zstd frame holding a chunk both versions use."""
    wanted = {chunk_id(piece(SHARED, 1 << 20)[i : i + CHUNK]) for i in range(0, 1 << 20, CHUNK)}
    for pack in (root / "packs").glob("*.pack"):
        raw = pack.read_bytes()
        for cid, offset, length in scan_pack(pack):
            if cid in wanted and raw[offset + 5] == 1:
                return pack, cid, offset, length
    raise AssertionError("no shared zstd frame")


def verify_json(root: Path) -> dict:
    return result_of(strata_json("store", "verify", "--store", root))


def readable_except(root: Path, bad: set[bytes]) -> int:
    """Read every chunk of every version except ``bad``; how many were read."""
    count = 0
    with Store(root) as store:
        for mid, _ in store.catalog.live_manifests():
            rows = store.get_manifest(mid).table("chunks")
            keep = [i for i, cid in enumerate(rows["id"].tolist()) if cid not in bad]
            out = store.get_many(rows["id"][keep].tolist(), rows["length"][keep].tolist())
            count += sum(1 for _ in out)
    return count


def test_flipped_byte_named_with_every_version(tmp_path: Path) -> None:
    root = tmp_path / "s"
    build(root)
    pack, cid, offset, length = shared_compressed_frame(root)
    with open(pack, "r+b") as f:
        f.seek(offset + 32 + length // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    report = verify_json(root)
    assert not report["clean"]
    (problem,) = report["problems"]
    assert problem["chunk"] == cid.hex() and problem["pack"] == pack.name
    assert problem["offset"] == offset
    assert sorted(problem["users"]) == ["os:v1", "os:v2"]
    assert strata("store", "verify", "--store", root).returncode == 1
    with Store(root) as store, pytest.raises(IntegrityError):
        store.get(cid)
    assert readable_except(root, {cid}) > 0


def test_every_damaged_frame_of_a_run_is_named(tmp_path: Path) -> None:
    """Verify decodes adjacent frames as one run; a damaged frame must not hide the next
    ones: three frames damaged side by side (two payloads, one header) are three problems."""
    root = tmp_path / "s"
    build(root)
    (pack,) = list((root / "packs").glob("*.pack"))
    raw = pack.read_bytes()
    frames = [f for f in scan_pack(pack) if raw[f[1] + 5] == 1]  # zstd frames
    damaged = frames[3:6]
    with open(pack, "r+b") as f:
        for n, (_, offset, length) in enumerate(damaged):
            at = offset + 8 if n == 1 else offset + 32 + length // 2  # raw_length, payload
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0x20]))
    report = verify_json(root)
    assert {p["chunk"] for p in report["problems"]} == {cid.hex() for cid, _, _ in damaged}
    assert report["chunks_checked"] == len(scan_pack(pack))


def test_truncated_pack(tmp_path: Path) -> None:
    root = tmp_path / "s"
    build(root)
    (pack,) = list((root / "packs").glob("*.pack"))
    frames = scan_pack(pack)
    cut = frames[len(frames) // 2][1] + 40
    os.truncate(pack, cut)
    lost = {cid for cid, offset, length in frames if offset + length > cut}
    report = verify_json(root)
    assert {p["chunk"] for p in report["problems"]} == {c.hex() for c in lost}
    assert all(p["users"] for p in report["problems"])
    with Store(root) as store, pytest.raises(TruncatedImage, match="past the end"):
        store.get(next(iter(lost)))
    assert readable_except(root, lost) > 0


def test_index_entry_past_eof_and_missing_chunk(tmp_path: Path) -> None:
    root = tmp_path / "s"
    mids = build(root)
    with Store(root) as store:
        rows = store.get_manifest(mids["v1"]).table("chunks")
        ids = [c for c in rows["id"].tolist() if c != ZERO_ID]
        size = store.pack_files()[0].stat().st_size
        store.db.execute("UPDATE chunks SET offset = ? WHERE id = ?", (size + 100, ids[-1]))
        store.db.execute("DELETE FROM chunks WHERE id = ?", (ids[-2],))
        with pytest.raises(TruncatedImage):
            store.get(ids[-1])
        with pytest.raises(NotFound, match=ids[-2].hex()):
            store.get(ids[-2])
    report = verify_json(root)
    kinds = {(p["kind"], p["chunk"]) for p in report["problems"]}
    assert kinds == {("chunk", ids[-1].hex()), ("missing-chunk", ids[-2].hex())}
    assert all(p["users"] == ["os:v1"] for p in report["problems"])
    assert readable_except(root, {ids[-1], ids[-2]}) > 0


def _plant_frame(root: Path, header_raw: int, payload: bytes, cid: bytes) -> None:
    frame = FRAME.pack(b"SCHK", 1, 1, 0, header_raw, len(payload), cid) + payload
    pack = root / "packs" / "0123456789abcdef.pack"
    pack.write_bytes(struct.pack("<8sII", b"STRATAPK", 1, 0) + frame)
    with Store(root) as store:
        store.db.execute(
            "INSERT INTO chunks VALUES (?, ?, 16, ?, ?)", (cid, pack.name, len(frame), header_raw)
        )


READ_BOMB = """
import sys
from strata.store import Store
from strata.errors import StrataError
with Store(sys.argv[1]) as store:
    try:
        store.get(bytes.fromhex(sys.argv[2]))
    except StrataError as e:
        print(type(e).__name__, e)
        sys.exit(3)
sys.exit(0)
"""


@pytest.mark.parametrize("content_size", [True, False])
def test_frame_inflating_past_declared_length(tmp_path: Path, content_size: bool) -> None:
    """A frame declaring 64 KiB whose payload inflates to 1 GiB: refused, memory bounded."""
    root = tmp_path / "s"
    build(root)
    comp = zstandard.ZstdCompressor(level=19, write_content_size=content_size)
    bomb = comp.compressobj()
    payload = b"".join(bomb.compress(bytes(1 << 24)) for _ in range(64)) + bomb.flush()
    cid = b"\x77" * 16
    _plant_frame(root, 64 << 10, payload, cid)
    run = measure([sys.executable, "-c", READ_BOMB, root, cid.hex()])
    assert run.returncode == 3 and "IntegrityError" in run.stdout, run.stdout + run.stderr
    assert run.peak_rss < 200 << 20, run.peak_rss
    checked = measure(
        [sys.executable, "-m", "strata", "store", "verify", "--json", "--store", root]
    )
    assert checked.returncode == 1 and checked.peak_rss < 250 << 20
    report = verify_json(root)
    assert [p["chunk"] for p in report["problems"]] == [cid.hex()]


def test_frame_declaring_more_than_max_chunk(tmp_path: Path) -> None:
    root = tmp_path / "s"
    build(root)
    cid = b"\x78" * 16
    _plant_frame(root, 1 << 30, b"x" * 64, cid)
    with Store(root) as store, pytest.raises(CorruptImage, match=r"raw_length|declares"):
        store.get(cid)
    with Store(root) as store:
        store.db.execute("UPDATE chunks SET raw_length = 100 WHERE id = ?", (cid,))
        with pytest.raises(CorruptImage, match="above the cap"):
            store.get(cid)


def test_damaged_manifest_reported_for_its_version(tmp_path: Path) -> None:
    root = tmp_path / "s"
    mids = build(root)
    with Store(root) as store:
        path = store.manifest_path(mids["v2"])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify_json(root)
    (problem,) = report["problems"]
    assert problem["kind"] == "manifest" and problem["users"] == ["os:v2"]
    # v2's own chunks would look like orphans; gc refuses, so verify does not count them
    assert report["orphan_chunks"] is None and report["orphan_bytes"] is None
    text = strata("store", "verify", "--store", root).stdout.splitlines()[-1]
    assert text.endswith("reclaimable by gc: unknown until every live manifest reads (gc refuses)")
    gc = strata("store", "gc", "--store", root)
    assert gc.returncode in (5, 7), gc.stderr  # gc refuses to guess what is live
    with Store(root) as store:
        rows = store.get_manifest(mids["v1"]).table("chunks")
        assert sum(len(b) for b in store.get_many(rows["id"].tolist(), rows["length"].tolist()))


def test_not_a_store_and_bad_config(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("hello")
    proc = strata("store", "init", "--store", tmp_path / "x")
    assert proc.returncode == 3 and "not a strata store" in proc.stderr
    Store.init(tmp_path / "s").close()
    (tmp_path / "s" / "store.json").write_text("{nonsense")
    proc = strata("store", "verify", "--store", tmp_path / "s")
    assert proc.returncode == 5 and "store config" in proc.stderr


@pytest.mark.parametrize(
    "config, code, words",
    [
        ("[]", 5, "corrupt store config: not a strata store"),
        ('{"version": 999}', 5, "corrupt store config: not a strata store"),
        ('{"format": "strata-store", "version": 999}', 6, "store format version 999"),
        ('{"format": "strata-store", "version": 1}', 5, "setting 'max_chunk' is None"),
        ("[" * 100000, 5, "corrupt store config: not JSON"),
    ],
)
def test_a_bad_store_config_is_named(tmp_path: Path, config: str, code: int, words: str) -> None:
    Store.init(tmp_path / "s").close()
    (tmp_path / "s" / "store.json").write_text(config)
    proc = strata("store", "stats", "--store", tmp_path / "s")
    assert proc.returncode == code, proc.stderr
    assert f"{tmp_path / 's' / 'store.json'}: " in proc.stderr and words in proc.stderr
