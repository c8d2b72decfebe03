"""Issue 7: finalize cost follows what changed; finalize vs casync; export vs qemu-img convert."""

from __future__ import annotations

import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from strata.blockdev import RawFileDevice
from strata.ops import image as images
from strata.ops import layers

from conftest import scaled
from support.images import GiB, MiB, mixed_bytes, write_sparse_raw
from support.layers import apply_with_strata
from support.tools import require

WRITES = scaled(256 * MiB, 16 * MiB)
RUN = 4 * MiB


def _writes(seed: int) -> list[tuple[int, bytes]]:
    data = mixed_bytes(WRITES, seed)
    return [(GiB // 2 + i * 2 * RUN, data[i * RUN : (i + 1) * RUN]) for i in range(WRITES // RUN)]


def _prepare(tmp: Path, size: int, name: str) -> tuple[Path, Path, dict]:
    """A store with an OS layer of ``size`` and a packaging disk holding the same writes."""
    store = tmp / f"store-{name}"
    os_raw = write_sparse_raw(tmp / f"os-{name}.raw", size, [(0, 32 * MiB)], seed=1, mixed=True)
    layers.import_os("os", "1", str(os_raw), store=store)
    out = tmp / f"out-{name}"
    out.mkdir()
    pkg = layers.create_packaging_disk(
        layers.PackagingRequest(layer="app", os="os", fmt="vhd", name="pkg", out=str(out)),
        store=store,
    )
    apply_with_strata(Path(pkg["disk_path"]), _writes(seed=2))
    return store, Path(pkg["disk_path"]), pkg


def _finalize_seconds(store: Path, disk: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "strata",
            "finalize",
            "--disk",
            str(disk),
            "--layer",
            "app",
            "--version",
            "1",
            "--store",
            str(store),
        ],
        check=True,
    )
    return time.perf_counter() - start


def test_finalize_cost_follows_writes_not_disk_size(tmp_path: Path, record_ratio) -> None:  # type: ignore[no-untyped-def]
    small = _finalize_seconds(*_prepare(tmp_path, 4 * GiB, "4g")[:2])
    big = _finalize_seconds(*_prepare(tmp_path, 64 * GiB, "64g")[:2])
    ratio = big / small
    record_ratio(
        what="finalize 64 GiB / 4 GiB virtual, same writes",
        strata_4g_s=round(small, 3),
        strata_64g_s=round(big, 3),
        ratio=round(ratio, 3),
        target=1.3,
        writes_bytes=WRITES,
    )


def test_finalize_vs_casync_make(tmp_path: Path, record_ratio) -> None:  # type: ignore[no-untyped-def]
    casync = require("casync")
    store, disk, _ = _prepare(tmp_path, 4 * GiB, "casync")
    raw = tmp_path / "packaging.raw"
    subprocess.run(
        [sys.executable, "-m", "strata", "disk", "convert", "-O", "raw", str(disk), str(raw)],
        check=True,
    )
    castore = tmp_path / "castr"
    start = time.perf_counter()
    subprocess.run(
        [casync, "make", f"--store={castore}", str(tmp_path / "p.caibx"), str(raw)],
        check=True,
        capture_output=True,
    )
    peer = time.perf_counter() - start
    ours = _finalize_seconds(store, disk)
    record_ratio(
        what="finalize vs casync make of the raw packaging disk",
        strata_s=round(ours, 3),
        peer="casync make",
        peer_s=round(peer, 3),
        ratio=round(ours / peer, 3),
        speedup=round(peer / ours, 2),
        target=round(1 / 3, 3),  # at least 3x faster
    )


EXPORT_DATA = scaled(1 * GiB, 32 * MiB)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("export")
    runs = [(i * 64 * MiB, 16 * MiB) for i in range(EXPORT_DATA // (16 * MiB))]
    raw = write_sparse_raw(tmp / "image.raw", 4 * GiB, runs, seed=3, mixed=True)
    store = tmp / "store"
    layers.import_os("os", "1", str(raw), store=store)
    images.publish(images.Template(name="img", os="os"), store=store)
    return store, raw


@pytest.mark.parametrize(
    "fmt, qemu_fmt, opts, target",
    [
        ("vhdx", "vhdx", [], "hyperv"),
        ("vhd", "vpc", ["-o", "subformat=dynamic"], "xenserver"),
        ("vmdk", "vmdk", ["-o", "subformat=monolithicSparse"], None),
    ],
)
def test_export_vs_qemu_convert(
    published: tuple[Path, Path],
    tmp_path: Path,
    versus,  # type: ignore[no-untyped-def]
    record_ratio,  # type: ignore[no-untyped-def]
    fmt: str,
    qemu_fmt: str,
    opts: list[str],
    target: str | None,
) -> None:
    store, raw = published
    qemu = require("qemu-img")
    ours_out, theirs_out = tmp_path / f"ours.{fmt}", tmp_path / f"theirs.{fmt}"
    strata_opts = ["-o", "subformat=monolithicSparse"] if fmt == "vmdk" else []
    cpu: dict[str, list[float]] = {"strata": [], "qemu": []}

    def ours() -> None:
        with _child_cpu(cpu["strata"]):
            _export(store, ours_out, target or "raw", fmt, strata_opts)

    def theirs() -> None:
        with _child_cpu(cpu["qemu"]):
            subprocess.run(
                [qemu, "convert", "-f", "raw", "-O", qemu_fmt, *opts, str(raw), str(theirs_out)],
                check=True,
            )

    ratio = versus(
        ours,
        theirs,
        peer=f"qemu-img convert -O {qemu_fmt}",
        rounds=5,
        target=1.0,
        outputs=(ours_out, theirs_out),
    )
    record_ratio(
        what=f"export {fmt}: CPU seconds (user + system), medians",
        strata_cpu_s=round(statistics.median(cpu["strata"]), 3),
        qemu_cpu_s=round(statistics.median(cpu["qemu"]), 3),
        time_ratio=round(ratio, 3),
    )
    assert (
        subprocess.run(
            [qemu, "compare", "-f", "raw", "-F", qemu_fmt, str(raw), str(ours_out)]
        ).returncode
        == 0
    )
    shutil.rmtree(tmp_path, ignore_errors=True)


@contextmanager
def _child_cpu(into: list[float]) -> Iterator[None]:
    """Append the CPU seconds (user + system) of the child processes the block waited for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    into.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def _export(store: Path, out: Path, target: str, fmt: str, options: list[str]) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "strata",
            "image",
            "export",
            "img",
            str(out),
            "--target",
            target,
            "-O",
            fmt,
            *options,
            "--force",
            "--store",
            str(store),
        ],
        check=True,
    )


def test_export_read_side_vs_qemu_convert(
    published: tuple[Path, Path],
    tmp_path: Path,
    versus,  # type: ignore[no-untyped-def]
    record_ratio,  # type: ignore[no-untyped-def]
) -> None:
    """What export cannot go below: reading the image from the store (every chunk read,
    decompressed and verified, nothing written), in process, beside qemu-img's whole convert
    of the raw.  Both tools' CPU seconds are recorded: the store's decode is CPU that qemu,
    copying a raw file, never spends."""
    from strata.blockdev.copy import iter_blocks
    from strata.layer.storedev import StoreDevice
    from strata.ops.image import find_image
    from strata.ops.store import open_store

    store, raw = published
    qemu = require("qemu-img")
    out = tmp_path / "theirs.vhdx"
    read: list[int] = []
    cpu: dict[str, list[float]] = {"strata": [], "qemu": []}

    def ours() -> None:
        start = time.process_time()
        with open_store(store) as st:
            _, manifest = find_image(st, "img")
            with StoreDevice(st, manifest.table("blocks"), int(manifest.meta["size"])) as dev:
                read.append(sum(len(b.data) for b in iter_blocks(dev, 1 << 20)))
        cpu["strata"].append(time.process_time() - start)

    def theirs() -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([qemu, "convert", "-f", "raw", "-O", "vhdx", str(raw), str(out)], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu["qemu"].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

    ratio = versus(
        ours,
        theirs,
        peer="qemu-img convert -O vhdx (whole convert)",
        outputs=(tmp_path / "none", out),
    )
    with RawFileDevice(str(raw)) as source:
        assert read[-1] == sum(len(b.data) for b in iter_blocks(source, 1 << 20))
    record_ratio(
        what="export's read side alone vs qemu-img's whole convert",
        time_ratio=round(ratio, 3),
        strata_cpu_s=round(statistics.median(cpu["strata"]), 3),
        qemu_cpu_s=round(statistics.median(cpu["qemu"]), 3),
        bytes_read=read[-1],
    )


def test_export_floor_zstd_decode_vs_qemu_convert(
    published: tuple[Path, Path],
    tmp_path: Path,
    versus,  # type: ignore[no-untyped-def]
    record_ratio,  # type: ignore[no-untyped-def]
) -> None:
    """The floor under any export from zstd-compressed chunks, measured with zstd's own
    decoder: the image's non-zero 64 KiB blocks (what the store holds), every other one to
    each of two files compressed with ``zstd -3``, decoded by two concurrent ``zstd -d`` to
    /dev/null (both cores, nothing written), beside qemu-img's whole convert of the raw.  CPU
    seconds are recorded too: an export spends the decode's CPU and then the writes', where
    qemu-img spends only the latter."""
    from strata.blockdev.copy import iter_blocks

    _, raw = published
    qemu, zstd = require("qemu-img"), require("zstd")
    halves = [tmp_path / "a.bin", tmp_path / "b.bin"]
    with RawFileDevice(str(raw)) as source, open(halves[0], "wb") as a, open(halves[1], "wb") as b:
        for n, block in enumerate(iter_blocks(source, 64 << 10)):
            view = block.data
            for at in range(0, len(view), 64 << 10):
                (a, b)[(n + at // (64 << 10)) % 2].write(view[at : at + (64 << 10)])
    for half in halves:
        subprocess.run([zstd, "-q", "-3", "-f", "--rm", str(half)], check=True)
    out = tmp_path / "theirs.vhd"
    cpu: dict[str, list[float]] = {"zstd": [], "qemu": []}

    def decode_both() -> None:
        with _child_cpu(cpu["zstd"]):
            procs = [
                subprocess.Popen([zstd, "-q", "-d", "-c", f"{h}.zst"], stdout=subprocess.DEVNULL)
                for h in halves
            ]
            assert all(p.wait() == 0 for p in procs)

    def convert() -> None:
        with _child_cpu(cpu["qemu"]):
            subprocess.run(
                [qemu, "convert", "-f", "raw", "-O", "vpc", str(raw), str(out)], check=True
            )

    ratio = versus(
        decode_both,
        convert,
        peer="qemu-img convert -O vpc (whole convert)",
        outputs=(tmp_path / "none", out),
    )
    record_ratio(
        what="floor: 2 concurrent zstd -d of the stored data vs qemu-img's whole convert",
        time_ratio=round(ratio, 3),
        zstd_cpu_s=round(statistics.median(cpu["zstd"]), 3),
        qemu_cpu_s=round(statistics.median(cpu["qemu"]), 3),
        compressed_bytes=sum(Path(f"{h}.zst").stat().st_size for h in halves),
    )
