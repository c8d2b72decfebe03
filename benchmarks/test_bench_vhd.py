"""VHD export beside qemu-img on the same 4 GiB raw holding 1 GiB of mixed data.

Both tools write into the same directory (one file system); strata's CLI runs in a child
process so its peak RSS is measured with wait4.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from strata import api

from conftest import RATIOS, scaled
from support.images import GiB, MiB
from support.tools import Measured, measure, measure_strata, qemu_compare, require

DISK = scaled(4 * GiB, 512 * MiB)
DATA = scaled(1 * GiB, 64 * MiB)
RSS_LIMIT = 128 * MiB


def _ok(m: Measured) -> Measured:
    assert m.returncode == 0, m.stderr
    return m


def _qemu_convert(
    raw: Path, out: Path, subformat: str, cpu: list[float] | None = None
) -> Callable[[], None]:
    """A timed qemu-img run; its CPU seconds are appended to ``cpu`` when given."""
    cmd = [require("qemu-img"), "convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={subformat}"]

    def run() -> None:
        m = _ok(measure([*cmd, raw, out]))
        if cpu is not None:
            cpu.append(m.cpu_seconds)

    return run


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_convert_vs_qemu(versus, record_ratio, mixed_raw: Path, subformat: str) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = (
        mixed_raw.with_name(f"s-{subformat}.vhd"),
        mixed_raw.with_name(f"q-{subformat}.vhd"),
    )
    rss: list[int] = []
    cpu: dict[str, list[float]] = {"strata": [], "qemu": []}

    def run_ours() -> None:
        m = _ok(
            measure_strata(
                "disk", "convert", "-O", "vhd", "-o", f"subformat={subformat}", mixed_raw, ours
            )
        )
        rss.append(m.peak_rss)
        cpu["strata"].append(m.cpu_seconds)

    ratio = versus(
        run_ours,
        _qemu_convert(mixed_raw, theirs, subformat, cpu["qemu"]),
        peer=f"qemu-img convert -O vpc ({subformat})",
        target=1.0,
        per_byte=DATA,
        outputs=(ours, theirs),
    )
    assert qemu_compare(mixed_raw, ours, "vpc") == 0
    record_ratio(
        subformat=subformat,
        strata_bytes=ours.stat().st_blocks * 512,
        qemu_bytes=theirs.stat().st_blocks * 512,
        peak_rss=max(rss),
        rss_limit=RSS_LIMIT,
        time_ratio=round(ratio, 3),
        # CPU seconds swing far less than wall time with this machine's page reclaim.
        strata_cpu_s=statistics.median(cpu["strata"]),
        qemu_cpu_s=statistics.median(cpu["qemu"]),
        cpu_ratio=round(statistics.median(cpu["strata"]) / statistics.median(cpu["qemu"]), 3),
    )
    assert max(rss) <= RSS_LIMIT, f"peak RSS {max(rss)} bytes"
    # The CLI's time ratio includes ~0.13 s of interpreter, numpy and click start-up against
    # a native binary.


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_engine_vs_qemu(versus, mixed_raw: Path, subformat: str) -> None:  # type: ignore[no-untyped-def]
    """``strata.api.convert`` in process (what a controller calls) beside the qemu-img run."""
    ours = mixed_raw.with_name(f"se-{subformat}.vhd")
    theirs = mixed_raw.with_name(f"qe-{subformat}.vhd")
    versus(
        lambda: api.convert(
            api.OpenSpec(str(mixed_raw)), str(ours), "vhd", [f"subformat={subformat}"]
        ),
        _qemu_convert(mixed_raw, theirs, subformat),
        peer=f"qemu-img convert -O vpc ({subformat}; strata in process)",
        target=1.0,
        per_byte=DATA,
        outputs=(ours, theirs),
    )
    assert qemu_compare(mixed_raw, ours, "vpc") == 0


def test_cli_floor_vs_qemu(versus, record_ratio, mixed_raw: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The floor under any CLI convert of this file to a fixed VHD written in Python, beside
    qemu-img's whole convert: writing the output's data bytes alone into the page cache
    (``dd`` from /dev/zero: nothing read, no format work), plus what strata's CLI spends
    before its first byte (interpreter, click, numpy, construct: the convert of a 1 MiB
    empty disk, whose work is nil).  A floor ratio above 1.0 means no Python CLI can match
    qemu-img on this file, however fast its copy."""
    qemu_out = tmp_path / "q.vhd"
    _qemu_convert(mixed_raw, qemu_out, "fixed")()
    data_bytes = qemu_out.stat().st_blocks * 512
    written = tmp_path / "written.bin"
    dd = [require("dd"), "if=/dev/zero", f"of={written}", "bs=1M", f"count={data_bytes >> 20}"]
    write_ratio = versus(
        lambda: _ok(measure([*dd, "status=none"])),
        _qemu_convert(mixed_raw, qemu_out, "fixed"),
        peer="qemu-img convert -O vpc (fixed)",
        outputs=(written, qemu_out),
    )
    empty = tmp_path / "empty.raw"
    empty.write_bytes(bytes(1 << 20))
    startup = []
    for _ in range(5):
        (tmp_path / "empty.vhd").unlink(missing_ok=True)
        m = _ok(
            measure_strata(
                "disk",
                "convert",
                "-O",
                "vhd",
                "-o",
                "subformat=fixed",
                empty,
                tmp_path / "empty.vhd",
            )
        )
        startup.append(m.seconds)
    row = RATIOS[-1]
    floor = (row["strata_s"] + statistics.median(startup)) / row["peer_s"]
    record_ratio(
        what="floor: page-cache writes of the output's data + strata CLI start-up, vs qemu-img",
        data_bytes=data_bytes,
        write_s=row["strata_s"],
        write_ratio=round(write_ratio, 3),
        cli_startup_s=round(statistics.median(startup), 3),
        qemu_s=row["peer_s"],
        floor_ratio=round(floor, 3),
    )
    assert data_bytes > DATA // 2
