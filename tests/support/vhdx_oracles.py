"""VHDX test helpers: libvhdi (pyvhdi) reads, sampled comparisons, and hand-built logs.

References: [MS-VHDX] 2.2.2 (headers), 2.3 (log entries) for the assembled logs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from strata.formats.vhdx import structs as S
from strata.formats.vhdx.layout import HeaderFields, encode_header
from strata.formats.vhdx.log import LogWrite, encode_entry
from strata.formats.vhdx.reader import ImageFile, select_header

from support.vhd_tools import pyvhdi_chain

MiB = 1 << 20


def probe_ranges(
    size: int, runs: Sequence[tuple[int, int]], block: int, seed: int = 7
) -> list[tuple[int, int]]:
    """Ranges worth comparing on a sparse disk: every run with margins, block edges, samples."""
    out: list[tuple[int, int]] = []
    margin = 256 << 10
    for offset, length in runs:
        lo, hi = max(0, offset - margin), min(size, offset + length + margin)
        out.append((lo, hi - lo))
        edge = (offset // block) * block
        out.append((edge, min(block, size - edge, 2 * MiB)))
    rng = np.random.default_rng(seed)
    for start in rng.integers(0, size // 4096, 16):
        at = int(start) * 4096
        out.append((at, min(256 << 10, size - at)))
    out.append((size - min(size, MiB), min(size, MiB)))
    return out


def assert_pyvhdi_matches(
    paths: Sequence[Path | str], raw: Path | str, ranges: Sequence[tuple[int, int]]
) -> None:
    files = pyvhdi_chain(paths)
    top = files[0]
    with open(raw, "rb") as ref:
        assert top.get_media_size() == os.fstat(ref.fileno()).st_size
        for offset, length in ranges:
            ours = top.read_buffer_at_offset(length, offset)
            want = os.pread(ref.fileno(), length, offset)
            assert ours == want, f"libvhdi differs from the reference at {offset:#x}+{length:#x}"
    for f in files:
        f.close()


# --- assembling a live log by hand ([MS-VHDX] 2.3) -------------------------------------------


def set_log_guid(path: Path, log_guid: bytes) -> None:
    """Rewrite both headers with ``log_guid`` (and fresh checksums), as a writer does first."""
    f = ImageFile(str(path), False)
    try:
        _, header = select_header(f)
    finally:
        f.close()
    fd = os.open(path, os.O_RDWR)
    try:
        for i, offset in enumerate(S.HEADER_OFFSETS):
            sequence = header.sequence_number + 1 + i
            fields = HeaderFields(
                **{**header.__dict__, "log_guid": log_guid, "sequence_number": sequence}
            )
            os.pwrite(fd, encode_header(fields), offset)
    finally:
        os.close(fd)


def write_log_entries(
    path: Path,
    log_guid: bytes,
    entries: Sequence[tuple[int, int, int, Sequence[LogWrite]]],
    flushed: int | None = None,
    last: int | None = None,
) -> None:
    """Place entries (position in the log, sequence, tail, writes) into the log region.

    An entry running past the end of the log wraps to its start, as the ring allows.
    """
    f = ImageFile(str(path), False)
    try:
        _, header = select_header(f)
        size = f.size
    finally:
        f.close()
    flushed = size if flushed is None else flushed
    last = -(-size // MiB) * MiB if last is None else last
    fd = os.open(path, os.O_RDWR)
    try:
        for position, sequence, tail, writes in entries:
            raw = encode_entry(sequence=sequence, tail=tail, log_guid=log_guid, writes=writes,
                               flushed_file_offset=flushed, last_file_offset=last)  # fmt: skip
            first = raw[: header.log_length - position]
            os.pwrite(fd, first, header.log_offset + position)
            if len(first) < len(raw):
                os.pwrite(fd, raw[len(first) :], header.log_offset)
    finally:
        os.close(fd)


def sparse_copy(src: Path, dst: Path) -> Path:
    """Copy only the data runs of ``src`` (shutil.copyfile would fill every hole)."""
    from strata.blockdev.rawfile import data_runs

    with open(src, "rb") as a, open(dst, "wb") as b:
        size = os.fstat(a.fileno()).st_size
        b.truncate(size)
        for start, end, is_data in data_runs(a.fileno(), 0, size):
            for lo in range(start, end, 4 * MiB) if is_data else ():
                chunk = os.pread(a.fileno(), min(4 * MiB, end - lo), lo)
                os.pwrite(b.fileno(), chunk, lo)
    return dst


def merged(ranges: Sequence[tuple[int, int]], align: int = 4096) -> list[tuple[int, int]]:
    """Sorted, aligned, non-overlapping (offset, length) ranges."""
    spans = sorted((o - o % align, -(-(o + n) // align) * align) for o, n in ranges if n > 0)
    out: list[list[int]] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi - lo) for lo, hi in out]


def assert_qemu_matches(
    image: Path | str, raw: Path | str, ranges: Sequence[tuple[int, int]]
) -> None:
    """qemu-img compare on slices (the raw driver's offset/size over the vhdx driver).

    A whole-disk compare reads every byte of a 10 GiB disk, because qemu reports every
    VHDX block as allocated; slices keep qemu as the oracle at a fraction of the cost.
    """
    from support.tools import qemu_img

    for offset, length in merged(ranges):
        ours = (
            f"driver=raw,offset={offset},size={length},file.driver=vhdx,file.file.filename={image}"
        )
        ref = f"driver=raw,offset={offset},size={length},file.filename={raw}"
        proc = qemu_img("compare", "--image-opts", ref, ours, check=False)
        assert proc.returncode == 0, f"qemu differs at {offset:#x}+{length:#x}: {proc.stdout}"
