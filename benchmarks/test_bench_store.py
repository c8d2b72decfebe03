"""Chunk store throughput beside zstd and casync on the same mixed bytes.

Full run: 2 GiB of tests/support/images.mixed_bytes (random, text-like, zero, low-entropy
quarters), generated in 64 MiB pieces; STRATA_BENCH_SMOKE=1 uses 64 MiB.
Targets: ingest >= 0.8x the throughput of `zstd -3 -T2` (time ratio <= 1.25) and >= 3x
`casync make` (time ratio <= 0.333); read-back beside `zstd -d`.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from strata.store import Manifest, PutStats, Store

from conftest import scaled
from support.images import mixed_bytes
from support.tools import measure, require

PIECE = 64 << 20
SIZE = scaled(2 << 30, 64 << 20)
CHUNK = 64 << 10
READ = 4 << 20


@pytest.fixture(scope="module")
def source(bench_dir: Path) -> Path:
    path = bench_dir / f"store-mixed-{SIZE >> 20}M.bin"
    if not path.exists() or path.stat().st_size != SIZE:
        with open(path, "wb") as f:
            for n in range(SIZE // PIECE):
                f.write(mixed_bytes(PIECE, 9000 + n))
    return path


def file_blocks(path: Path):  # type: ignore[no-untyped-def]
    buf = bytearray(READ)
    view = memoryview(buf)
    offset = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            for start in range(0, n, CHUNK):
                yield offset + start, view[start : min(n, start + CHUNK)]
            offset += n


def child_cpu(cmd: list) -> float:  # type: ignore[type-arg]
    """user+sys seconds of one child process (wait4 rusage)."""
    proc = subprocess.Popen([str(c) for c in cmd])
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_utime + usage.ru_stime


def ingest(path: Path, root: Path, stats: PutStats | None = None) -> bytes:
    shutil.rmtree(root, ignore_errors=True)
    with Store.init(root) as store:
        table = store.put_blocks(file_blocks(path), level=3, stats=stats)
        manifest = Manifest("bench")
        manifest.add_table("chunks", "chunks-v1", table)
        mid = store.put_manifest(manifest)
        store.catalog.create_layer("bench", "os")
        store.catalog.create_version("bench", "v1")
        store.catalog.transition("bench", "v1", "finalizing")
        store.commit_version("bench", "v1", mid)  # fsync'ed and committed
    return mid


def test_ingest_vs_zstd(versus, record_ratio, source: Path, bench_dir: Path) -> None:  # type: ignore[no-untyped-def]
    zstd = require("zstd")
    root = bench_dir / "store-ingest"
    out = bench_dir / "store-ingest.zst"
    ratio = versus(
        lambda: ingest(source, root),
        lambda: subprocess.run([zstd, "-3", "-T2", "-q", "-f", source, "-o", out], check=True),
        peer="zstd -3 -T2",
        target=1.25,
        per_byte=SIZE,
    )
    stats = PutStats()
    before = resource.getrusage(resource.RUSAGE_SELF)
    ingest(source, root, stats)
    after = resource.getrusage(resource.RUSAGE_SELF)
    ours_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    peer_cpu = child_cpu([zstd, "-3", "-T2", "-q", "-f", source, "-o", out])
    record_ratio(
        metric="CPU seconds (user+sys) strata / zstd -3 -T2",
        strata=round(ours_cpu, 3),
        peer=round(peer_cpu, 3),
        ratio=round(ours_cpu / peer_cpu, 3),
    )
    with Store(root) as store:
        facts = store.stats()
    record_ratio(
        metric="stored bytes strata / zstd -3",
        strata=facts["stored_bytes"],
        peer=out.stat().st_size,
        ratio=round(facts["stored_bytes"] / out.stat().st_size, 3),
        logical=facts["logical_bytes"],
        dedup_ratio=facts["dedup_ratio"],
        compression_ratio=facts["compression_ratio"],
        zero_bytes=stats.zero_bytes,
        duplicate_bytes=stats.duplicate_bytes,
    )
    assert ratio < 3.0, "ingest far slower than zstd -3 -T2"


def test_ingest_vs_casync(versus, source: Path, bench_dir: Path) -> None:  # type: ignore[no-untyped-def]
    casync = require("casync")
    root = bench_dir / "store-ingest-casync"
    castore = bench_dir / "casync-store"

    def theirs() -> None:
        shutil.rmtree(castore, ignore_errors=True)
        subprocess.run(
            [
                casync,
                "make",
                "--compression=zstd",
                f"--store={castore}",
                bench_dir / "store.caibx",
                source,
            ],
            check=True,
            capture_output=True,
        )

    ratio = versus(
        lambda: ingest(source, root),
        theirs,
        peer="casync make",
        target=0.333,
        per_byte=SIZE,
        rounds=1,
        warmup=False,
    )
    assert ratio < 1.0, "ingest slower than casync make"


def test_read_vs_zstd_d(versus, source: Path, bench_dir: Path) -> None:  # type: ignore[no-untyped-def]
    zstd = require("zstd")
    root = bench_dir / "store-read"
    mid = ingest(source, root)
    packed = bench_dir / "store-read.zst"
    subprocess.run([zstd, "-3", "-T2", "-q", "-f", source, "-o", packed], check=True)

    def read_back(digest: hashlib._Hash | None = None) -> int:
        total = 0
        with Store(root) as store:
            rows = store.get_manifest(mid).table("chunks")
            for data in store.get_many(rows["id"].tolist(), rows["length"].tolist()):
                total += len(data)
                if digest is not None:
                    digest.update(data)
        return total

    def theirs() -> None:
        with open(os.devnull, "wb") as null:
            subprocess.run([zstd, "-d", "-q", "-c", packed], stdout=null, check=True)

    versus(read_back, theirs, peer="zstd -d", target=1.25, per_byte=SIZE)
    got, expected = hashlib.sha256(), hashlib.sha256()
    assert read_back(got) == SIZE
    with open(source, "rb") as f:
        while block := f.read(READ):
            expected.update(block)
    assert got.hexdigest() == expected.hexdigest(), "read-back differs from the source"


def test_ingest_peak_rss(record_ratio, bench_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Peak RSS of a whole ingest-and-commit process beside zstd's, on generated data."""
    zstd = require("zstd")
    helper = Path(__file__).resolve().parent.parent / "tests" / "support" / "store_ingest.py"
    root = bench_dir / "store-rss"
    shutil.rmtree(root, ignore_errors=True)
    Store.init(root).close()
    pieces = max(1, SIZE // (8 << 20))
    seeds = ",".join(str(7000 + n) for n in range(pieces))
    ours = measure([sys.executable, helper, root, "rss", "v1", seeds, str(8 << 20)])
    assert ours.returncode == 0, ours.stderr
    source = bench_dir / f"store-mixed-{SIZE >> 20}M.bin"
    theirs = measure([zstd, "-3", "-T2", "-q", "-f", source, "-o", bench_dir / "rss.zst"])
    record_ratio(
        metric="peak RSS ingest (bytes)",
        strata=ours.peak_rss,
        peer="zstd -3 -T2",
        peer_rss=theirs.peak_rss,
        data_bytes=pieces * (8 << 20),
    )
    assert ours.peak_rss < 400 << 20
