"""The copy-on-write overlay the merge edits: random writes and reads against a flat bytearray;
the source is never written and only touched blocks are reported changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.blockdev.rawfile import RawFileDevice
from strata.layer.filemerge import BLOCK, OverlayDevice

SIZE = 10 * BLOCK + 4096  # a short last block


DATA = np.random.default_rng(5).integers(0, 256, SIZE, dtype=np.uint8).tobytes()


def _source(tmp: Path) -> tuple[Path, bytes]:
    path = tmp / "source.raw"
    path.write_bytes(DATA)
    return path, DATA


ops = st.lists(
    st.tuples(st.integers(0, SIZE - 1), st.integers(1, 3 * BLOCK), st.integers(0, 255)),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(writes=ops, reads=st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, SIZE))))
def test_overlay_matches_a_flat_reference(
    tmp_path_factory: object, writes: list[tuple[int, int, int]], reads: list[tuple[int, int]]
) -> None:
    tmp = tmp_path_factory.mktemp("overlay")  # type: ignore[attr-defined]
    path, data = _source(tmp)
    flat = bytearray(data)
    touched: set[int] = set()
    with RawFileDevice(str(path)) as src:
        overlay = OverlayDevice(src, str(tmp))
        try:
            for offset, length, value in writes:
                length = min(length, SIZE - offset)
                overlay.write(offset, bytes([value]) * length)
                flat[offset : offset + length] = bytes([value]) * length
                touched.update(range(offset // BLOCK, (offset + length - 1) // BLOCK + 1))
            for offset, length in reads:
                length = min(length, SIZE - offset)
                assert overlay.read(offset, length) == bytes(flat[offset : offset + length])
            changed = dict(overlay.changed_blocks())
            assert set(changed) == {b * BLOCK for b in touched}
            for lo, block in changed.items():
                assert block == bytes(flat[lo : lo + BLOCK])
        finally:
            overlay.close()
    assert path.read_bytes() == data
