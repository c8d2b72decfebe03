"""VHDX export beside qemu-img on the same 4 GiB raw holding 1 GiB of mixed data.

Both write a dynamic VHDX with 32 MiB blocks; strata's peak RSS is measured with wait4.
The CLI run includes the interpreter start and strata's imports (about 0.3 s idle, 1 s on a
loaded machine), so the conversion itself is also timed in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import CONVERT_ROUNDS, scaled
from support.images import GiB, MiB
from support.tools import Measured, measure, measure_strata, qemu_compare, require

DISK = scaled(4 * GiB, 512 * MiB)
DATA = scaled(1 * GiB, 64 * MiB)
RSS_LIMIT = 128 * MiB


def _ok(m: Measured) -> Measured:
    assert m.returncode == 0, m.stderr
    return m


def _qemu_convert(raw: Path, out: Path, options: str) -> Callable[[], None]:
    cmd = [require("qemu-img"), "convert", "-f", "raw", "-O", "vhdx", "-o", options, raw, out]

    def run() -> None:
        _ok(measure(cmd))

    return run


def test_cli_dynamic_vs_qemu(versus, record_ratio, mixed_raw: Path) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = mixed_raw.with_name("s.vhdx"), mixed_raw.with_name("q.vhdx")
    options = "subformat=dynamic,block_size=32M"
    rss: list[int] = []

    def run_ours() -> None:
        m = _ok(measure_strata("disk", "convert", "-O", "vhdx", "-o", options, mixed_raw, ours))
        rss.append(m.peak_rss)

    ratio = versus(
        run_ours,
        _qemu_convert(mixed_raw, theirs, options),
        peer="qemu-img convert -O vhdx (dynamic)",
        target=1.0,
        per_byte=DATA,
        outputs=(ours, theirs),
        rounds=CONVERT_ROUNDS,
    )
    assert qemu_compare(mixed_raw, ours, "vhdx") == 0
    record_ratio(
        strata_bytes=ours.stat().st_blocks * 512,
        qemu_bytes=theirs.stat().st_blocks * 512,
        peak_rss=max(rss),
        rss_limit=RSS_LIMIT,
    )
    assert max(rss) <= RSS_LIMIT, f"peak RSS {max(rss) >> 20} MiB"
    assert ratio > 0


def test_engine_dynamic_vs_qemu(versus, mixed_raw: Path) -> None:  # type: ignore[no-untyped-def]
    from strata.ops import disk as ops

    ours, theirs = mixed_raw.with_name("se.vhdx"), mixed_raw.with_name("qe.vhdx")
    options = "subformat=dynamic,block_size=32M"

    def run_ours() -> None:
        ops.convert(ops.OpenSpec(str(mixed_raw)), str(ours), "vhdx", [options])

    versus(
        run_ours,
        _qemu_convert(mixed_raw, theirs, options),
        peer="qemu-img convert -O vhdx (in-process strata)",
        target=1.0,
        per_byte=DATA,
        outputs=(ours, theirs),
        rounds=CONVERT_ROUNDS,
    )
    assert qemu_compare(mixed_raw, ours, "vhdx") == 0
