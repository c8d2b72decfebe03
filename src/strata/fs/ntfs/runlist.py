"""NTFS runlists (mapping pairs): decode to (vcn, lcn, clusters) runs; ``lcn`` None is sparse.

References: Russon & Fledel "NTFS Documentation" 7.6 (data runs); libfsntfs documentation
"data runs".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from strata.errors import CorruptImage


class Run(NamedTuple):  # a tuple: the delta makes one per changed file (cheaper than a class)
    vcn: int
    lcn: int | None  # None: a sparse run (reads as zeros)
    clusters: int


Corrupt = Callable[[str, str, int], CorruptImage]  # (problem, field, offset in the runlist)


def decode_runlist(data: bytes, start_vcn: int, total_clusters: int, bad: Corrupt) -> list[Run]:
    """The runs of ``data`` from ``start_vcn``; each real run must lie inside the volume."""
    runs: list[Run] = []
    pos, vcn, lcn = 0, start_vcn, 0
    while pos < len(data) and data[pos] != 0:
        header = data[pos]
        len_size, off_size = header & 0x0F, header >> 4
        if len_size == 0 or len_size > 8 or off_size > 8:
            raise bad(f"run header {header:#04x} has invalid field sizes", "runlist", pos)
        end = pos + 1 + len_size + off_size
        if end > len(data):
            raise bad("run runs past the end of its attribute", "runlist", pos)
        length = int.from_bytes(data[pos + 1 : pos + 1 + len_size], "little", signed=True)
        if length <= 0:
            raise bad(f"run length {length} is not positive", "runlist", pos)
        if off_size == 0:
            runs.append(Run(vcn, None, length))
        else:
            lcn += int.from_bytes(data[pos + 1 + len_size : end], "little", signed=True)
            if lcn < 0 or lcn + length > total_clusters:
                raise bad(
                    f"run of {length} clusters at LCN {lcn} lies outside the volume "
                    f"({total_clusters} clusters)",
                    "runlist",
                    pos,
                )
            runs.append(Run(vcn, lcn, length))
        vcn += length
        pos = end
    return runs
