"""VMDK export beside qemu-img on the same 4 GiB raw holding 1 GiB of mixed data.

streamOptimized: strata deflates at level 1 on every core (stored or
Huffman-only for grains where that is as small) where qemu-img deflates at the
default level on one core.

The timed strata side is the Python API a controller calls (``strata.api.convert``);
the CLI is run once as well, for its peak RSS and its wall time, which adds the
interpreter's start-up and the import of every command group.
"""

from __future__ import annotations

import time
from pathlib import Path

from strata import api

from conftest import scaled
from support.images import GiB, MiB
from support.tools import Measured, measure, measure_strata, qemu_compare, require

DISK = scaled(4 * GiB, 512 * MiB)
DATA = scaled(1 * GiB, 64 * MiB)
RSS_LIMIT = 256 * MiB


def _ok(m: Measured) -> Measured:
    assert m.returncode == 0, m.stderr
    return m


def _bench(versus, record_ratio, raw: Path, subformat: str, target: float) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    qemu = require("qemu-img")
    ours, theirs = raw.with_name(f"s-{subformat}.vmdk"), raw.with_name(f"q-{subformat}.vmdk")
    opts = [f"subformat={subformat}"]

    def run_qemu() -> Measured:
        return _ok(
            measure([qemu, "convert", "-f", "raw", "-O", "vmdk", "-o", opts[0], raw, theirs])
        )

    versus(
        lambda: api.convert(api.OpenSpec(str(raw)), str(ours), "vmdk", opts),
        run_qemu,
        peer=f"qemu-img convert -O vmdk ({subformat})",
        target=target,
        per_byte=DATA,
        warmup=subformat != "streamOptimized",  # qemu takes ~35 s per round there
    )
    assert qemu_compare(raw, ours, "vmdk") == 0
    cli = _ok(measure_strata("disk", "convert", "-O", "vmdk", "-o", opts[0], raw, ours))
    start = time.perf_counter()
    run_qemu()
    qemu_s = time.perf_counter() - start
    our_size, qemu_size = ours.stat().st_size, theirs.stat().st_size
    record_ratio(
        subformat=subformat,
        strata_bytes=our_size,
        qemu_bytes=qemu_size,
        size_ratio=round(our_size / qemu_size, 4),
        cli_s=round(cli.seconds, 3),
        qemu_s=round(qemu_s, 3),
        cli_ratio=round(cli.seconds / qemu_s, 3),
        peak_rss=cli.peak_rss,
    )
    assert cli.peak_rss <= RSS_LIMIT, f"peak RSS {cli.peak_rss >> 20} MiB"
    return our_size, qemu_size


def test_stream_optimized_vs_qemu(versus, record_ratio, mixed_raw: Path) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = _bench(versus, record_ratio, mixed_raw, "streamOptimized", 0.2)
    assert abs(ours / theirs - 1) <= 0.10, f"{ours} bytes vs qemu's {theirs}"


def test_monolithic_sparse_vs_qemu(versus, record_ratio, mixed_raw: Path) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = _bench(versus, record_ratio, mixed_raw, "monolithicSparse", 1.0)
    assert ours <= theirs * 1.01
