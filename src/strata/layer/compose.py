"""Compose block tables: later layers win, block by block, on the shared 64 KiB grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strata.store import CHUNK_ROW, ZERO_ID


def compose_tables(tables: Sequence[np.ndarray], keep_zero: bool = False) -> np.ndarray:
    """One table where each offset takes the row of the last table that has it.

    Rows naming the zero chunk (a block a layer turned to zeros) win like any other. An
    image drops them (an absent row reads as zeros); a layer keeps them (keep_zero), since
    there an absent row means "unchanged".
    """
    if not tables:
        return np.zeros(0, CHUNK_ROW)
    rows = np.concatenate([np.asarray(t, CHUNK_ROW) for t in tables])
    rank = np.concatenate([np.full(len(t), i, np.int32) for i, t in enumerate(tables)])
    order = np.lexsort((rank, rows["offset"]))
    rows = rows[order]
    last = np.append(rows["offset"][1:] != rows["offset"][:-1], True) if len(rows) else []
    rows = rows[last]
    if keep_zero:
        return np.ascontiguousarray(rows)
    zero = np.frombuffer(ZERO_ID, "V16")[0]
    return np.ascontiguousarray(rows[rows["id"] != zero])
