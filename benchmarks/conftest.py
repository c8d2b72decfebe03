"""Benchmarks always run strata beside a peer tool in the same session and report the ratio.

``STRATA_BENCH_SMOKE=1`` shrinks every data set so CI runs them quickly and they cannot rot.
``STRATA_BENCH_ROUNDS=N`` sets the timed rounds of every strata-vs-peer comparison (default 5,
fewer where a peer takes long): this machine's page reclaim swings single runs up to 5x.
Ratios are printed at the end and written to ``build/bench/ratios.json``.

A row with a numeric ``target`` (an issue's bound on its ``ratio``, or on the field named by
``target_of``) gets ``met`` in full runs, and the end of the run lists every target missed.
A missed speed target fails the run only with ``STRATA_BENCH_STRICT=1`` (for a quiet machine):
on a shared VM one slow round says nothing about the code.  What strata produced is still
checked by assertions in every run (qemu-img compare, sizes, peak RSS).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before anything imports numpy, as the strata CLI does: OpenBLAS otherwise starts a thread
# per core that spins for a while, and the in-process rows then time strata beside it
# (perf: 3-6 % of a convert's samples in blas_thread_server; strata calls no BLAS).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest

SMOKE = os.environ.get("STRATA_BENCH_SMOKE") == "1"
STRICT = os.environ.get("STRATA_BENCH_STRICT") == "1"
RATIOS: list[dict[str, Any]] = []
BENCH_DIR = Path(os.environ.get("STRATA_BENCH_DIR", "build/bench"))


def scaled(full: int, smoke: int) -> int:
    return smoke if SMOKE else full


# Rounds for the convert rows beside qemu-img, where each tool takes 0.15-0.5 s.  A round of
# either tool that a pass of the VM's free page reporting falls into (reported_kib in
# /sys/module/page_reporting/parameters grows) is 5-7x slower, most of it kernel time in the
# copy into new page-cache folios: with 5 rounds the median flipped the verdict from run to
# run (docs/benchmarks.md).
CONVERT_ROUNDS = 11


def timed_rounds(rounds: int) -> int:
    return 1 if SMOKE else int(os.environ.get("STRATA_BENCH_ROUNDS", rounds))


def ours_calls(rounds: int = 5, warmup: bool = True) -> int:
    """How many times ``versus`` calls ``ours``: for benchmarks that prepare each call's
    input untimed beforehand."""
    return timed_rounds(rounds) + (1 if warmup and not SMOKE else 0)


@pytest.fixture(scope="session")
def mixed_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The format benchmarks' common source: a 4 GiB raw with 1 GiB of mixed data in 64 runs."""
    from support.images import scattered_runs, write_sparse_raw

    disk, data = scaled(4 << 30, 512 << 20), scaled(1 << 30, 64 << 20)
    path = tmp_path_factory.mktemp("bench") / "mixed.raw"
    runs = scattered_runs(disk, 64, data, seed=7, align=1 << 20)
    return write_sparse_raw(path, disk, runs, mixed=True)


@pytest.fixture(scope="session")
def bench_dir() -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return BENCH_DIR


def settle() -> None:
    """Write back dirty pages before a timed round: otherwise whichever tool runs second pays
    for the first one's writeback (measured here: a 2x swing on 800 MB writes)."""
    os.sync()


def timed(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        settle()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture
def versus(benchmark: Any, request: pytest.FixtureRequest) -> Callable[..., float]:
    """Time ``ours`` with pytest-benchmark and ``theirs`` the same way; record ours/theirs.

    Rounds alternate (peer, then strata, each after ``settle``), so both tools meet the same
    page-cache state: run back to back, whichever went second was measured up to 2x off.
    A ratio below 1.0 means strata is faster.  ``target`` is the issue's bound on the ratio.
    """

    def run(
        ours: Callable[[], object],
        theirs: Callable[[], object],
        *,
        peer: str,
        rounds: int = 5,
        target: float | None = None,
        per_byte: int | None = None,
        outputs: tuple[Path, Path] | None = None,
        warmup: bool = True,
    ) -> float:
        """``outputs`` (ours, theirs) are removed untimed before each tool's round, so
        neither is timed freeing its previous round's file (unlinking 800 MB cost 0.15-0.19 s
        here, half of a convert); both exist after the last round.  ``warmup=False`` skips the
        untimed first round of each (for peers that take half a minute)."""
        rounds = timed_rounds(rounds)
        peer_times: list[float] = []

        def remove(which: int) -> None:
            if outputs is not None:
                outputs[which].unlink(missing_ok=True)

        def peer_then_settle() -> None:
            remove(1)
            peer_times.append(timed(theirs, 1))
            remove(0)
            settle()

        if warmup and not SMOKE:
            # One untimed round each first: the first big write after other work pays the
            # kernel's page reclaim (measured: 1.3 s of CPU for what then takes 0.16 s).
            peer_then_settle()
            remove(0)
            ours()
            peer_times.clear()
        benchmark.pedantic(
            ours, setup=peer_then_settle, rounds=rounds, iterations=1, warmup_rounds=0
        )
        our_time = benchmark.stats.stats.median
        peer_time = statistics.median(peer_times)
        ratio = our_time / peer_time if peer_time else float("inf")
        row = {
            "test": request.node.name,
            "strata_s": round(our_time, 4),
            "peer": peer,
            "peer_s": round(peer_time, 4),
            "ratio": round(ratio, 3),
            "target": target,
            "smoke": SMOKE,
            **_spread(list(benchmark.stats.stats.data), peer_times),
        }
        if per_byte:
            row["strata_GBps"] = round(per_byte / our_time / 1e9, 3)
            row["peer_GBps"] = round(per_byte / peer_time / 1e9, 3)
        _judge(row)
        benchmark.extra_info.update(row)
        RATIOS.append(row)
        return ratio

    return run


@pytest.fixture
def record_ratio(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record a ratio measured by hand (e.g. peak RSS, file sizes)."""

    def record(**row: Any) -> None:
        row = {"test": request.node.name, "smoke": SMOKE, **row}
        _judge(row)
        RATIOS.append(row)

    return record


def _spread(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    """How far the verdict's ratio (of the two medians) can be trusted on this machine,
    whose slow spells (2-5x, seconds long) hit either tool: the ratio of each round's pair
    (peer, then strata) and of the fastest rounds.  Informative only; the target is judged
    on ``ratio``."""
    if len(ours) != len(theirs) or not all(theirs):
        return {}
    paired = sorted(o / t for o, t in zip(ours, theirs, strict=True))
    return {
        "rounds": len(ours),
        "paired_ratios": [round(r, 2) for r in paired],
        "ratio_of_minimums": round(min(ours) / min(theirs), 3),
    }


def _judge(row: dict[str, Any]) -> None:
    """Mark a full run's row with whether it meets its target: smoke data is too small to
    judge, and a target without a number (a note) is not judged."""
    target, value = row.get("target"), row.get(row.get("target_of", "ratio"))
    if SMOKE or not isinstance(target, int | float) or not isinstance(value, int | float):
        return
    row["met"] = value <= target


def missed_targets() -> list[dict[str, Any]]:
    return [row for row in RATIOS if row.get("met") is False]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RATIOS:
        return
    terminalreporter.section("strata vs peers (ratio = strata time / peer time)")
    for row in RATIOS:
        terminalreporter.write_line(json.dumps(row))
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "ratios.json").write_text(json.dumps(RATIOS, indent=1))
    judged = [row for row in RATIOS if "met" in row]
    if judged:
        missed = missed_targets()
        terminalreporter.section(f"targets: {len(judged) - len(missed)} met, {len(missed)} missed")
        for row in missed:
            field = row.get("target_of", "ratio")
            terminalreporter.write_line(
                f"MISSED {row['test']}: {field} {row[field]} > target {row['target']}"
                + ("" if STRICT else " (STRATA_BENCH_STRICT=1 makes this fail the run)")
            )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if STRICT and missed_targets() and exitstatus == 0:
        session.exitstatus = 1


def record_cli_publish(record: Callable[..., None], store: Path, files: int, what: str) -> None:
    """Publish ``appA`` and ``appB`` on ``win`` through the CLI in a child process: its wall
    time and peak RSS as a row (the file-level publish benchmarks)."""
    from support.tools import measure_strata

    args = ["--name", "rss", "--os", "win", "--app", "appA", "--app", "appB"]
    measured = measure_strata("image", "publish", *args, "--store", store)
    assert measured.returncode == 0, measured.stderr
    record(
        metric=f"{what}: wall time (CLI) and peak RSS",
        files=files,
        strata_s=round(measured.seconds, 3),
        strata_peak_rss_mib=round(measured.peak_rss / (1 << 20), 1),
    )
