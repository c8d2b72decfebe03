"""Pure-Python/numpy reference implementations of strata's native kernels."""

from strata._py.crc32c import crc32c
from strata._py.fastcdc import fastcdc_cuts
from strata._py.kernels import (
    bitmap_runs,
    changed_sectors,
    is_zero,
    join_spans,
    nonzero_blocks,
    pread_pieces,
)
from strata._py.lznt1 import lznt1_decompress

__all__ = [
    "bitmap_runs",
    "changed_sectors",
    "crc32c",
    "fastcdc_cuts",
    "is_zero",
    "join_spans",
    "lznt1_decompress",
    "nonzero_blocks",
    "pread_pieces",
]
