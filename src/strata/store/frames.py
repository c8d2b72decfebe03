"""Frames: one stored object (a chunk or a manifest) with its header.

References: strata store format 1 (structs.FRAME); zstd frame header, RFC 8878 section 3.1.1.

A frame is decoded only after its header is checked against what the index (or the caller)
expects, and the zstd frame's own content size against the header, so a hostile frame can
never make us allocate more than the declared raw length, itself capped by the store's
maximum chunk size. Every decode ends by comparing the xxh3-128 of the output with the id.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zstandard

from strata.errors import CorruptImage, IntegrityError, StrataError, TruncatedImage, Unsupported
from strata.store.ids import Buffer, chunk_id, to_hex
from strata.store.structs import CODEC_STORED, CODEC_ZSTD, FORMAT_VERSION, FRAME

HEADER_SIZE = FRAME.size
_local = threading.local()


@dataclass(frozen=True, slots=True)
class Where:
    """Where a frame was read from, for error messages."""

    path: str
    offset: int


@dataclass(frozen=True, slots=True)
class FrameHeader:
    magic: bytes
    version: int
    codec: int
    flags: int
    raw_length: int
    stored_length: int
    id: bytes


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = zstandard.ZstdDecompressor()
    return dec


def encode(data: Buffer, cid: bytes, level: int, magic: bytes) -> bytes:
    """Header + zstd payload, or the raw bytes when zstd would not make them smaller."""
    payload = _compressor(level).compress(data)
    codec = CODEC_ZSTD
    if len(payload) >= len(data):
        payload, codec = bytes(data), CODEC_STORED
    return FRAME.pack(magic, FORMAT_VERSION, codec, 0, len(data), len(payload), cid) + payload


def encode_frames(
    chunks: Sequence[Buffer], ids: bytes, level: int, magic: bytes
) -> tuple[bytes, list[int]]:
    """``encode`` of each chunk (``ids``: their 16-byte ids back to back): the frames back to
    back in one bytes, and where each ends in it.  The C encoder (``strata._native_store``)
    runs this without the GIL; this is its reference."""
    encoder = frame_encoder()
    if encoder is not None:
        blob, ends = encoder(chunks, ids, level, magic)
        return blob, memoryview(ends).cast("q").tolist()
    frames = [encode(c, ids[16 * i : 16 * i + 16], level, magic) for i, c in enumerate(chunks)]
    return b"".join(frames), list(itertools.accumulate(map(len, frames)))


def parse_header(buf: Buffer, where: Where, magic: bytes, max_raw: int) -> FrameHeader:
    if len(buf) < HEADER_SIZE:
        raise TruncatedImage(
            path=where.path,
            structure="frame header",
            problem=f"only {len(buf)} of {HEADER_SIZE} bytes present",
            offset=where.offset,
        )
    header = FrameHeader(*FRAME.unpack_from(buf, 0))
    _check_header(header, where, magic, max_raw)
    return header


def _check_header(h: FrameHeader, where: Where, magic: bytes, max_raw: int) -> None:
    def bad(field: str, problem: str, rel: int) -> CorruptImage:
        return CorruptImage(
            path=where.path,
            structure="frame header",
            problem=problem,
            field=field,
            offset=where.offset + rel,
        )

    if h.magic != magic:
        raise bad("magic", f"magic {h.magic!r}, expected {magic!r}", 0)
    if h.version != FORMAT_VERSION:
        raise bad("version", f"format version {h.version} is not {FORMAT_VERSION}", 4)
    if h.codec not in (CODEC_STORED, CODEC_ZSTD):
        raise bad("codec", f"unknown codec {h.codec}", 5)
    if h.raw_length > max_raw:
        raise bad("raw_length", f"declares {h.raw_length} bytes, above the cap {max_raw}", 8)
    if h.codec == CODEC_ZSTD and h.raw_length == 0:
        raise bad("raw_length", "an empty chunk cannot be zstd-compressed", 8)
    if h.codec == CODEC_STORED and h.stored_length != h.raw_length:
        raise bad("stored_length", "stored frame with stored_length != raw_length", 12)
    if h.stored_length > max(h.raw_length, 1) * 2 + 1024:
        raise bad("stored_length", f"payload of {h.stored_length} bytes is implausible", 12)


def decode(buf: Buffer, where: Where, magic: bytes, max_raw: int, expect: bytes | None) -> bytes:
    """The verified uncompressed bytes of the frame in ``buf`` (header + payload)."""
    header, payload = _checked(buf, where, magic, max_raw, expect)
    data = _inflate(payload, header, where)
    _verify(data, header, where)
    return data


def decode_into(
    buf: Buffer, where: Where, magic: bytes, max_raw: int, expect: bytes, out: memoryview
) -> None:
    """Decode the frame in ``buf`` straight into ``out``, which must be exactly as long as
    the frame's raw length, and verify it.  Unlike ``decode`` this runs without the GIL:
    python-zstandard's one-shot ``decompress`` holds it (two threads decoded no faster than
    one, measured), its stream reader's ``readinto`` releases it (1.8x on two cores)."""
    header, payload = _checked(buf, where, magic, max_raw, expect)
    if header.raw_length != len(out):
        raise _bad_payload(where, f"holds {header.raw_length} bytes, {len(out)} expected")
    if header.codec == CODEC_STORED:
        out[:] = payload
    else:
        _check_content_size(payload, header, where)
        _inflate_into(payload, where, out)
    _verify(out, header, where)


PLAN_FIELDS = (
    4  # decode_frames plan row: frame offset in blob, frame length, out offset, raw length
)


def decode_frames(
    blob: Buffer, plan: Buffer, ids: bytes, out: memoryview, magic: bytes, max_raw: int
) -> int:
    """Decode the frames ``plan`` names (int64 rows of ``PLAN_FIELDS``) from ``blob`` into
    ``out``, each verified against its 16-byte id in ``ids``: the index of the first frame that
    fails, or -1.  The C decoder (``strata._native_store``) runs this without the GIL; this is
    its reference, and the caller re-decodes a failed frame with ``decode_into`` to name the
    error."""
    decoder = frame_decoder()
    if decoder is not None:
        return int(decoder(blob, plan, ids, out, magic, max_raw))
    rows = memoryview(bytes(memoryview(plan))).cast("q")
    for i in range(len(rows) // PLAN_FIELDS):
        src, length, dst, raw = rows[i * PLAN_FIELDS : (i + 1) * PLAN_FIELDS]
        frame = memoryview(blob)[src : src + length]
        try:
            decode_into(
                frame,
                Where("", src),
                magic,
                max_raw,
                ids[i * 16 : i * 16 + 16],
                out[dst : dst + raw],
            )
        except StrataError:
            return i
    return -1


@functools.cache
def frame_decoder() -> Callable[..., int] | None:
    """The C frame decoder, or None when the reference serves: ``STRATA_BACKEND=python``, or
    the optional extension was not built (no libzstd-dev / libxxhash-dev)."""
    wanted = os.environ.get("STRATA_BACKEND", "").strip().lower()
    if wanted == "python":
        return None
    try:
        from strata._native_store import decode_frames as native
    except ImportError as e:
        if wanted == "native":
            raise Unsupported(
                what="STRATA_BACKEND=native but strata._native_store is not built"
            ) from e
        return None
    return native


def frame_encoder() -> Callable[..., tuple[bytes, bytes]] | None:
    """The C frame encoder, or None when the reference serves (``frame_decoder`` decides for
    both, so clearing its cache switches both)."""
    if frame_decoder() is None:
        return None
    from strata._native_store import encode_frames as native

    return native


def _checked(
    buf: Buffer, where: Where, magic: bytes, max_raw: int, expect: bytes | None
) -> tuple[FrameHeader, memoryview]:
    """The frame's header, checked, and its whole payload."""
    header = parse_header(buf, where, magic, max_raw)
    if expect is not None and header.id != expect:
        raise IntegrityError(
            what=f"{where.path} at offset {where.offset:#x}: frame holds id "
            f"{to_hex(header.id)}, the index says {to_hex(expect)}"
        )
    end = HEADER_SIZE + header.stored_length
    if len(buf) < end:
        raise TruncatedImage(
            path=where.path,
            structure="frame payload",
            problem=f"{len(buf) - HEADER_SIZE} of {header.stored_length} payload bytes present",
            field="stored_length",
            offset=where.offset,
        )
    return header, memoryview(buf)[HEADER_SIZE:end]


def _verify(data: Buffer, header: FrameHeader, where: Where) -> None:
    if chunk_id(data) != header.id:
        raise IntegrityError(
            what=f"chunk {to_hex(header.id)} ({where.path} at offset {where.offset:#x}): "
            "content does not match its id"
        )


def _inflate_into(payload: memoryview, where: Where, out: memoryview) -> None:
    try:
        reader = _decompressor().stream_reader(payload, read_across_frames=False)
        filled = 0
        while filled < len(out):
            n = reader.readinto(out[filled:])
            if not n:
                break
            filled += n
        extra = reader.read(1)
    except zstandard.ZstdError as e:
        raise _bad_payload(where, f"zstd: {e}") from e
    if filled != len(out) or extra:
        problem = "more" if extra else f"{filled}"
        raise _bad_payload(where, f"inflates to {problem} bytes, header says {len(out)}")


def _check_content_size(payload: memoryview, h: FrameHeader, where: Where) -> None:
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as e:
        raise _bad_payload(where, f"not a zstd frame ({e})") from e
    if declared not in (-1, h.raw_length):
        raise _bad_payload(where, f"zstd frame declares {declared} bytes, header {h.raw_length}")


def _inflate(payload: memoryview, h: FrameHeader, where: Where) -> bytes:
    if h.codec == CODEC_STORED:
        return bytes(payload)
    _check_content_size(payload, h, where)
    try:
        data = _decompressor().decompress(payload, max_output_size=h.raw_length)
    except zstandard.ZstdError as e:
        raise _bad_payload(where, f"zstd: {e}") from e
    if len(data) != h.raw_length:
        raise _bad_payload(where, f"inflates to {len(data)} bytes, header says {h.raw_length}")
    return data


def _bad_payload(where: Where, problem: str) -> IntegrityError:
    """A payload that does not inflate to its declared length cannot hold the chunk's bytes."""
    return IntegrityError(
        what=f"{where.path} at offset {where.offset:#x}: frame payload is damaged: {problem}"
    )
