"""A block table read back from the store as a device: every read equals the source bytes,
and a damaged frame (stored or zstd) gives a specific error, never wrong bytes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from strata.blockdev import RawFileDevice
from strata.errors import CorruptImage, IntegrityError, TruncatedImage
from strata.layer.blocks import capture_disk
from strata.layer.storedev import StoreDevice
from strata.store import Store, frames

from support.images import MiB, write_sparse_raw

SIZE = 24 * MiB


@pytest.fixture
def captured(tmp_path: Path) -> tuple[Path, bytes, np.ndarray]:
    """A disk of mixed data (random, text-like with repeated chunks, zeros, 2-bit noise) in
    runs that start and end off the 64 KiB grid, captured into a fresh store."""
    runs = [(0, 3 * MiB), (5 * MiB + 4096, 6 * MiB - 8192), (17 * MiB, 7 * MiB)]
    raw = write_sparse_raw(tmp_path / "disk.raw", SIZE, runs, seed=5, mixed=True)
    root = tmp_path / "store"
    with Store.init(root) as store, RawFileDevice(str(raw)) as disk:
        table = capture_disk(store, disk).blocks
    return root, raw.read_bytes(), table


@pytest.fixture(params=["native", "python"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Frames decoded by the C decoder, then by its pure-Python reference."""
    monkeypatch.setenv("STRATA_BACKEND", request.param)
    frames.frame_decoder.cache_clear()
    yield request.param
    monkeypatch.delenv("STRATA_BACKEND")
    frames.frame_decoder.cache_clear()


def _read(
    root: Path, table: np.ndarray, spans: list[tuple[int, int]], workers: int | None = None
) -> list[bytes]:
    with Store(root, workers=workers) as store, StoreDevice(store, table, SIZE) as dev:
        return [dev.read(offset, length) for offset, length in spans]


@pytest.mark.parametrize("workers", [1, 3])  # STRATA_THREADS: decoded on the caller's thread alone
def test_reads_equal_the_source(
    captured: tuple[Path, bytes, np.ndarray], workers: int, backend: str
) -> None:
    root, source, table = captured
    rng = random.Random(1)
    spans = [(0, SIZE), (SIZE - 512, 512), (3 * MiB - 100, 200)]
    spans += [(o, rng.randrange(1, 3 * MiB)) for o in rng.sample(range(0, SIZE - 3 * MiB), 40)]
    for (offset, length), data in zip(spans, _read(root, table, spans, workers), strict=True):
        assert data == source[offset : offset + length], (offset, length)


def _frames(root: Path) -> list[tuple[Path, int, int, int]]:
    """(pack, offset, length, codec) of every chunk frame in the store."""
    with Store(root) as store:
        rows = store.db.execute("SELECT pack, offset, length FROM chunks").fetchall()
    frames = []
    for pack, offset, length in rows:
        path = root / "packs" / pack
        with open(path, "rb") as f:
            f.seek(offset + 5)
            frames.append((path, offset, length, f.read(1)[0]))
    return frames


@pytest.mark.parametrize("codec", [0, 1], ids=["stored", "zstd"])
def test_damaged_payload_is_an_integrity_error(
    captured: tuple[Path, bytes, np.ndarray], codec: int, backend: str
) -> None:
    root, _, table = captured
    pack, offset, length, _ = next(f for f in _frames(root) if f[3] == codec)
    with open(pack, "r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0x5A]))
    with pytest.raises(IntegrityError):
        _read(root, table, [(0, SIZE)])


def test_random_damage_never_reads_wrong_bytes(
    captured: tuple[Path, bytes, np.ndarray], backend: str
) -> None:
    """200 single-byte flips anywhere in frames: the read is right or refused, nothing else."""
    root, source, table = captured
    frames = _frames(root)
    rng = random.Random(7)
    refused = 0
    for _ in range(200):
        pack, offset, length, _ = rng.choice(frames)
        at = offset + rng.randrange(length)
        with open(pack, "r+b") as f:
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
            f.flush()
            try:
                data = _read(root, table, [(0, SIZE)])[0]
            except (IntegrityError, CorruptImage, TruncatedImage):
                refused += 1
            else:
                assert data == source
            finally:
                f.seek(at)
                f.write(byte)
                f.flush()
    assert refused > 150  # a flip that changes nothing read (reserved header bits) is rare


def test_index_length_unlike_the_table_is_corrupt(
    captured: tuple[Path, bytes, np.ndarray],
) -> None:
    root, _, table = captured
    bad = table.copy()
    row = int(np.flatnonzero(bad["length"] == 64 << 10)[0])
    bad["length"][row] = 4096
    with pytest.raises(CorruptImage, match="the table says 4096"):
        _read(root, bad, [(0, SIZE)])
