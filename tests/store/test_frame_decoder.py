"""The C frame decoder (strata._native_store) against its pure-Python reference
(frames.decode_frames under STRATA_BACKEND=python): the same bytes for good frames, the same
first refused frame for 3 000 mutated ones, and nothing else escaping."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from strata.store import frames
from strata.store.ids import chunk_id
from strata.store.structs import CHUNK_MAGIC

from support.images import mixed_bytes

MAX_RAW = 1 << 20
Decoder = Callable[..., int]


@pytest.fixture
def native() -> Decoder:
    frames.frame_decoder.cache_clear()
    decoder = frames.frame_decoder()
    assert decoder is not None, "strata._native_store is not built (make installs libzstd-dev)"
    return decoder


@pytest.fixture
def reference(monkeypatch: pytest.MonkeyPatch) -> Iterator[Decoder]:
    """frames.decode_frames with the C decoder switched off."""
    monkeypatch.setenv("STRATA_BACKEND", "python")
    frames.frame_decoder.cache_clear()
    yield frames.decode_frames
    monkeypatch.delenv("STRATA_BACKEND")
    frames.frame_decoder.cache_clear()


def _run(seed: int, count: int = 12) -> tuple[bytearray, np.ndarray, bytes, list[bytes]]:
    """``count`` frames, stored and zstd, of 0-20 KiB, with gaps between them as in a pack."""
    rng = random.Random(seed)
    blob, rows, ids, chunks = bytearray(), [], b"", []
    out_at = 0
    for i in range(count):
        data = mixed_bytes(rng.choice([1, 512, 4096, 20000]), seed * 100 + i)
        if rng.random() < 0.3:
            data = bytes(data[:1]) * len(data)  # compresses
        frame = frames.encode(data, chunk_id(data), 3, CHUNK_MAGIC)
        blob += bytes(rng.randrange(3))
        rows.append((len(blob), len(frame), out_at, len(data)))
        blob += frame
        out_at += len(data) + rng.randrange(2)
        ids += chunk_id(data)
        chunks.append(data)
    return blob, np.array(rows, np.int64), ids, chunks


def _decode(decoder: Decoder, blob: bytes, plan: np.ndarray, ids: bytes) -> tuple[int, bytes]:
    out = bytearray(int((plan[:, 2] + plan[:, 3]).max()) + 1)
    failed = decoder(bytes(blob), plan, ids, memoryview(out), CHUNK_MAGIC, MAX_RAW)
    return failed, bytes(out)


def test_good_frames_decode_alike(native: Decoder, reference: Decoder) -> None:
    for seed in range(20):
        blob, plan, ids, chunks = _run(seed)
        got, ref = _decode(native, blob, plan, ids), _decode(reference, blob, plan, ids)
        assert got == ref
        assert got[0] == -1
        for (_, _, at, raw), data in zip(plan.tolist(), chunks, strict=True):
            assert got[1][at : at + raw] == data


def _mutate(rng: random.Random, blob: bytearray, plan: np.ndarray, ids: bytearray) -> None:
    what = rng.random()
    if what < 0.7:  # a byte of a frame, biased towards its 32-byte header
        row = plan[rng.randrange(len(plan))]
        span = 32 if rng.random() < 0.5 else int(row[1])
        at = int(row[0]) + rng.randrange(span)
        blob[at] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
    elif what < 0.85:  # a table that names another length or id than the frame
        row = rng.randrange(len(plan))
        plan[row, 3] = max(0, int(plan[row, 3]) + rng.choice([-1, 1, 512]))
    else:
        ids[rng.randrange(len(ids))] ^= 1


def test_mutated_frames_fail_alike(native: Decoder, reference: Decoder) -> None:
    """3 000 mutations.  Every frame the C decoder passes holds the right bytes, and the frame
    it refuses the reference refuses too (so the caller can always name the error).  The two
    may differ the other way: the reference's zstd stream reader flags a flipped bit that
    changes no output byte (an unused bit of an entropy stream), which libzstd's one-shot
    decode lets through; the output is still checked against the chunk's id."""
    rng = random.Random(11)
    refused = lenient = 0
    for case in range(3000):
        blob, plan, ids, chunks = _run(case % 50, count=6)
        mutable_ids = bytearray(ids)
        _mutate(rng, blob, plan, mutable_ids)
        ids = bytes(mutable_ids)
        failed, out = _decode(native, blob, plan, ids)
        good = len(plan) if failed < 0 else failed
        for (_, _, at, raw), data in zip(plan.tolist()[:good], chunks, strict=False):
            assert out[at : at + raw] == data, case
        if failed >= 0:
            refused += 1
            alone = plan[failed : failed + 1].copy()
            alone[0, 2] = 0
            assert _decode(reference, blob, alone, ids[16 * failed : 16 * failed + 16])[0] == 0
        lenient += _decode(reference, blob, plan, ids)[0] != failed
    assert refused > 2400  # a flip that changes nothing checked (flags, gap bytes) is rare
    assert lenient < 30, lenient


def test_plan_outside_its_buffers_is_refused(native: Decoder) -> None:
    blob, plan, ids, _ = _run(1, count=2)
    out = memoryview(bytearray(int(plan[:, 2].max() + plan[:, 3].max())))
    for row, col, value in [(0, 0, len(blob)), (1, 1, 10), (1, 2, len(out)), (0, 0, -1)]:
        bad = plan.copy()
        bad[row, col] = value
        with pytest.raises(ValueError, match="outside its buffers"):
            native(bytes(blob), bad, ids, out, CHUNK_MAGIC, MAX_RAW)
    with pytest.raises(ValueError, match="agree in size"):
        native(bytes(blob), plan, ids[:-1], out, CHUNK_MAGIC, MAX_RAW)
