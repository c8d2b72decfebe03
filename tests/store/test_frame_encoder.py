"""The C frame encoder (strata._native_store.encode_frames) against its pure-Python reference
(frames.encode_frames under STRATA_BACKEND=python, ``frames.encode`` per chunk): the same
frames, byte for byte, for chunks of every kind, and each one decodes to its chunk."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from strata.store import frames
from strata.store.ids import Buffer, chunk_id
from strata.store.structs import CHUNK_MAGIC, CODEC_STORED, CODEC_ZSTD, FRAME

from support.images import mixed_bytes

Encoder = Callable[..., tuple[bytes, list[int]]]


@pytest.fixture
def native() -> Iterator[Encoder]:
    frames.frame_decoder.cache_clear()
    assert frames.frame_encoder() is not None, "strata._native_store is not built"
    yield frames.encode_frames


@pytest.fixture
def reference(monkeypatch: pytest.MonkeyPatch) -> Iterator[Encoder]:
    """frames.encode_frames with the C encoder switched off."""
    monkeypatch.setenv("STRATA_BACKEND", "python")
    frames.frame_decoder.cache_clear()
    assert frames.frame_encoder() is None
    yield frames.encode_frames
    monkeypatch.delenv("STRATA_BACKEND")
    frames.frame_decoder.cache_clear()


def _chunks(seed: int) -> list[Buffer]:
    """Chunks as callers hand them over: bytes, bytearrays and views; empty, tiny, repeated
    (zstd wins) and random (stored raw)."""
    rng = random.Random(seed)
    out: list[Buffer] = []
    for i in range(rng.randrange(1, 40)):
        data = mixed_bytes(rng.choice([0, 1, 100, 4096, 20000, 70000]), seed * 100 + i)
        if rng.random() < 0.3:
            data = data[:1] * len(data)
        kind = rng.randrange(3)
        out.append(data if kind == 0 else bytearray(data) if kind == 1 else memoryview(data))
    return out


def _encode(encoder: Encoder, chunks: list[Buffer], level: int) -> tuple[bytes, list[int]]:
    ids = b"".join(chunk_id(c) for c in chunks)
    return encoder(chunks, ids, level, CHUNK_MAGIC)


@pytest.mark.parametrize("level", [1, 3])
def test_native_frames_equal_the_reference(native: Encoder, reference: Encoder, level: int) -> None:
    for seed in range(12):
        chunks = _chunks(seed)
        ids = b"".join(chunk_id(c) for c in chunks)
        blob, ends = native(chunks, ids, level, CHUNK_MAGIC)
        assert (blob, ends) == reference(chunks, ids, level, CHUNK_MAGIC)


def test_each_frame_decodes_to_its_chunk(native: Encoder) -> None:
    chunks = _chunks(99)
    blob, ends = _encode(native, chunks, 1)
    assert len(ends) == len(chunks) and ends[-1] == len(blob)
    codecs = set()
    for chunk, start, end in zip(chunks, [0, *ends[:-1]], ends, strict=True):
        frame = blob[start:end]
        codecs.add(FRAME.unpack_from(frame)[2])
        where = frames.Where("blob", start)
        assert frames.decode(frame, where, CHUNK_MAGIC, 1 << 20, chunk_id(chunk)) == bytes(chunk)
    assert codecs == {CODEC_STORED, CODEC_ZSTD}


def test_refuses_ids_that_do_not_match(native: Encoder) -> None:
    with pytest.raises(ValueError):
        native([b"abc", b"def"], bytes(16), 1, CHUNK_MAGIC)
    with pytest.raises(TypeError):
        native([b"abc", 5], bytes(32), 1, CHUNK_MAGIC)
