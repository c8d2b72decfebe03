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

from conftest import CONVERT_ROUNDS, scaled
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


@pytest.fixture(scope="module")
def cli_startup(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Median seconds of a CLI convert whose work is nil (an empty 1 MiB disk): the
    interpreter, click, construct and strata's modules, then the exit."""
    work = tmp_path_factory.mktemp("startup")
    empty = work / "empty.raw"
    empty.write_bytes(bytes(1 << 20))
    out = work / "empty.vhd"
    seconds = []
    for _ in range(5):
        out.unlink(missing_ok=True)
        m = _ok(measure_strata("disk", "convert", "-O", "vhd", "-o", "subformat=fixed", empty, out))
        seconds.append(m.seconds)
    return statistics.median(seconds)


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_convert_vs_qemu(  # type: ignore[no-untyped-def]
    versus, record_ratio, mixed_raw: Path, subformat: str, cli_startup: float
) -> None:
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
        rounds=CONVERT_ROUNDS,
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
        # Part of strata's time that is no convert work (qemu-img starts in a few ms).
        cli_startup_s=round(cli_startup, 3),
    )
    assert max(rss) <= RSS_LIMIT, f"peak RSS {max(rss)} bytes"


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
        rounds=CONVERT_ROUNDS,
    )
    assert qemu_compare(mixed_raw, ours, "vpc") == 0
