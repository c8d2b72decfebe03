"""Backend selection for the hot kernels.

``BACKEND`` is ``"native"`` when the C extension ``strata._native`` is built
and not overridden, ``"python"`` otherwise.  ``STRATA_BACKEND=python`` forces
the reference; ``STRATA_BACKEND=native`` makes a missing extension an error.
"""

from __future__ import annotations

import os
from types import ModuleType

from strata.errors import Unsupported


def _select() -> tuple[str, ModuleType]:
    # The numpy reference is imported only when chosen (start-up of every command).
    wanted = os.environ.get("STRATA_BACKEND", "").strip().lower()
    if wanted == "python":
        from strata import _py

        return "python", _py
    try:
        from strata import _native
    except ImportError as e:
        if wanted == "native":
            raise Unsupported(what="STRATA_BACKEND=native but strata._native is not built") from e
        from strata import _py

        return "python", _py
    return "native", _native


BACKEND, _impl = _select()

is_zero = _impl.is_zero
changed_sectors = _impl.changed_sectors
nonzero_blocks = _impl.nonzero_blocks
bitmap_runs = _impl.bitmap_runs
fastcdc_cuts = _impl.fastcdc_cuts
lznt1_decompress = _impl.lznt1_decompress
crc32c = _impl.crc32c
pread_pieces = _impl.pread_pieces
join_spans = _impl.join_spans
# The MFT scan's reference is fs.ntfs.records.numpy_rows (whole-window numpy, not a kernel
# of strata._py): None selects it.
mft_scan = getattr(_impl, "mft_scan", None)

__all__ = [
    "BACKEND",
    "bitmap_runs",
    "changed_sectors",
    "crc32c",
    "fastcdc_cuts",
    "is_zero",
    "join_spans",
    "lznt1_decompress",
    "mft_scan",
    "nonzero_blocks",
    "pread_pieces",
]
