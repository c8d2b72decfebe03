"""Mutated frames and manifests: only StrataError subclasses come out, quickly."""

from __future__ import annotations

import random
import time

import numpy as np

from strata.errors import StrataError
from strata.store.frames import Where, decode, encode
from strata.store.ids import chunk_id
from strata.store.manifest import Manifest, chunk_table, parse
from strata.store.structs import CHUNK_MAGIC

from support.store_tools import piece

MUTATIONS = 2500


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif choice < 0.7:
            del buf[rng.randrange(len(buf) + 1) :]
        elif choice < 0.85:
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        else:
            at = rng.randrange(max(1, len(buf) - 4))
            buf[at : at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\0\0\x01\0"])
    return bytes(buf)


def test_fuzz_frames() -> None:
    rng = random.Random(6)
    data = piece(5, 64 << 10)
    frames = [
        encode(data[:4096], chunk_id(data[:4096]), 3, CHUNK_MAGIC),
        encode(data[-4096:], chunk_id(data[-4096:]), 3, CHUNK_MAGIC),
        encode(rng.randbytes(512), chunk_id(b"x"), 3, CHUNK_MAGIC),
    ]
    started = time.monotonic()
    outcomes = {"ok": 0, "error": 0}
    for n in range(MUTATIONS):
        frame = mutate(rng, frames[n % len(frames)])
        try:
            out = decode(frame, Where("fuzz", 0), CHUNK_MAGIC, 1 << 20, None)
        except StrataError:
            outcomes["error"] += 1
        else:
            assert chunk_id(out) == frame[16:32]
            outcomes["ok"] += 1
    assert outcomes["error"] > MUTATIONS // 2
    assert time.monotonic() - started < 60


def test_fuzz_manifests() -> None:
    rng = random.Random(7)
    manifest = Manifest("os-layer", {"name": "x", "sizes": [1, 2, 3]})
    ids = np.frombuffer(rng.randbytes(16 * 40), "V16")
    manifest.add_table("chunks", "chunks-v1", chunk_table(np.arange(40) << 16, [65536] * 40, ids))
    raw = manifest.to_bytes()
    assert parse(raw).to_bytes() == raw
    started = time.monotonic()
    errors = 0
    for _ in range(MUTATIONS):
        try:
            parsed = parse(mutate(rng, raw))
        except StrataError:
            errors += 1
        else:
            parsed.chunk_ids()
            parsed.logical_size()
    assert errors > MUTATIONS // 2
    assert time.monotonic() - started < 60
