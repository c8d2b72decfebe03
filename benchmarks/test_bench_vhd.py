"""VHD export beside qemu-img on the same 4 GiB raw holding 1 GiB of mixed data.

Both tools write into the same directory (one file system); strata's CLI runs in a child
process so its peak RSS is measured with wait4.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import scaled

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from strata.ops import disk as ops

from support.images import GiB, MiB
from support.tools import Measured, measure, measure_strata, qemu_compare, require

DISK = scaled(4 * GiB, 512 * MiB)
DATA = scaled(1 * GiB, 64 * MiB)
RSS_LIMIT = 128 * MiB


def _in_process(raw: Path, out: Path, subformat: str) -> float:
    """The convert alone, without the interpreter start-up the CLI pays."""
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    ops.convert(ops.OpenSpec(str(raw)), str(out), "vhd", [f"subformat={subformat}"])
    return time.perf_counter() - start


def peer_time(out: Path, run_peer: Callable[[], None]) -> float:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    run_peer()
    return time.perf_counter() - start


def _ok(m: Measured) -> Measured:
    assert m.returncode == 0, m.stderr
    return m


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_convert_vs_qemu(versus, record_ratio, mixed_raw: Path, subformat: str) -> None:  # type: ignore[no-untyped-def]
    qemu = require("qemu-img")
    ours, theirs = (
        mixed_raw.with_name(f"s-{subformat}.vhd"),
        mixed_raw.with_name(f"q-{subformat}.vhd"),
    )
    rss: list[int] = []

    def run_ours() -> None:
        m = _ok(
            measure_strata(
                "disk", "convert", "-O", "vhd", "-o", f"subformat={subformat}", mixed_raw, ours
            )
        )
        rss.append(m.peak_rss)

    def run_qemu() -> None:
        cmd = [qemu, "convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={subformat}"]
        _ok(measure([*cmd, mixed_raw, theirs]))

    ratio = versus(
        run_ours,
        run_qemu,
        peer=f"qemu-img convert -O vpc ({subformat})",
        target=1.0,
        per_byte=DATA,
        outputs=(ours, theirs),
    )
    assert qemu_compare(mixed_raw, ours, "vpc") == 0
    inproc = _in_process(mixed_raw, ours, subformat)
    record_ratio(
        in_process_s=round(inproc, 4),
        in_process_ratio=round(inproc / peer_time(theirs, run_qemu), 3),
        subformat=subformat,
        strata_bytes=ours.stat().st_blocks * 512,
        qemu_bytes=theirs.stat().st_blocks * 512,
        peak_rss=max(rss),
        rss_limit=RSS_LIMIT,
        time_ratio=round(ratio, 3),
    )
    assert max(rss) <= RSS_LIMIT, f"peak RSS {max(rss)} bytes"
    # The time ratio (target 1.0) is recorded, not asserted: on a shared 2-core machine it
    # swings with load and includes strata's interpreter start-up against a native binary.
