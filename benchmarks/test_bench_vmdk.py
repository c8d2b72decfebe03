"""VMDK export beside qemu-img on the same 4 GiB raw holding 1 GiB of mixed data.

streamOptimized: strata deflates at level 1 on every core (level 0 for grains
that do not compress) where qemu-img deflates at the default level on one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import SMOKE, scaled

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.images import GiB, MiB, scattered_runs, write_sparse_raw
from support.tools import Measured, measure, measure_strata, qemu_compare, require

DISK = scaled(4 * GiB, 512 * MiB)
DATA = scaled(1 * GiB, 64 * MiB)
RSS_LIMIT = 256 * MiB


@pytest.fixture(scope="module")
def mixed_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vmdk-bench") / "mixed.raw"
    runs = scattered_runs(DISK, 64, DATA, seed=7, align=1 << 20)
    return write_sparse_raw(path, DISK, runs, mixed=True)


def _ok(m: Measured) -> Measured:
    assert m.returncode == 0, m.stderr
    return m


def _bench(
    versus, record_ratio, raw: Path, subformat: str, target: float
) -> tuple[float, int, int]:  # type: ignore[no-untyped-def]
    qemu = require("qemu-img")
    ours, theirs = raw.with_name(f"s-{subformat}.vmdk"), raw.with_name(f"q-{subformat}.vmdk")
    rss: list[int] = []

    def run_ours() -> None:
        m = _ok(
            measure_strata(
                "disk", "convert", "-O", "vmdk", "-o", f"subformat={subformat}", raw, ours
            )
        )
        rss.append(m.peak_rss)

    def run_qemu() -> None:
        _ok(
            measure(
                [
                    qemu,
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "vmdk",
                    "-o",
                    f"subformat={subformat}",
                    raw,
                    theirs,
                ]
            )
        )

    ratio = versus(
        run_ours,
        run_qemu,
        peer=f"qemu-img convert -O vmdk ({subformat})",
        target=target,
        per_byte=DATA,
    )
    assert qemu_compare(raw, ours, "vmdk") == 0
    our_size, qemu_size = ours.stat().st_size, theirs.stat().st_size
    record_ratio(
        subformat=subformat,
        strata_bytes=our_size,
        qemu_bytes=qemu_size,
        size_ratio=round(our_size / qemu_size, 4),
        peak_rss=max(rss),
    )
    assert max(rss) <= RSS_LIMIT, f"peak RSS {max(rss) >> 20} MiB"
    return ratio, our_size, qemu_size


def test_stream_optimized_vs_qemu(versus, record_ratio, mixed_raw: Path) -> None:  # type: ignore[no-untyped-def]
    ratio, ours, theirs = _bench(versus, record_ratio, mixed_raw, "streamOptimized", 0.2)
    assert abs(ours / theirs - 1) <= 0.10, f"{ours} bytes vs qemu's {theirs}"
    if not SMOKE:
        assert ratio <= 0.2, f"streamOptimized only {1 / ratio:.1f}x faster than qemu-img"


def test_monolithic_sparse_vs_qemu(versus, record_ratio, mixed_raw: Path) -> None:  # type: ignore[no-untyped-def]
    ratio, ours, theirs = _bench(versus, record_ratio, mixed_raw, "monolithicSparse", 1.0)
    assert ours <= theirs * 1.01
    if not SMOKE:
        assert ratio <= 1.0, f"monolithicSparse {ratio:.2f}x qemu-img's time"
