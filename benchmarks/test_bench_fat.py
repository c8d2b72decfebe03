"""FAT reader and editor beside mtools: read a whole tree, write a whole tree, peak RSS.

References: mtools 4.0.32 (mcopy -s) as the peer; volumes from mkfs.fat, sparse, in bench_dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from strata.blockdev import RawFileDevice
from strata.fs.fat import FatEditor, FatVolume

from conftest import scaled
from support.tools import measure, require

ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
DIRS, FILES, MAX_SIZE = scaled(20, 4), scaled(100, 25), scaled(200_000, 40_000)


@pytest.fixture(scope="module")
def tree(bench_dir: Path) -> Path:
    root = bench_dir / "fat-src"
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(1)
    for d in range(DIRS):
        (root / f"dir {d:02d}").mkdir(parents=True)
        for i in range(FILES):
            data = rng.integers(0, 256, int(rng.integers(0, MAX_SIZE)), dtype=np.uint8)
            (root / f"dir {d:02d}" / f"file number {i:03d}.bin").write_bytes(data.tobytes())
    return root


def empty_volume(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(scaled(300, 64) << 20)
    subprocess.run([require("mkfs.fat"), "-F", "32", str(path)], check=True, capture_output=True)
    return path


def mcopy_in(image: Path, tree: Path) -> None:
    subprocess.run(
        [require("mcopy"), "-s", "-i", str(image), *map(str, sorted(tree.iterdir())), "::/"],
        check=True,
        env=ENV,
    )


def strata_in(image: Path, tree: Path) -> None:
    with RawFileDevice(str(image), writable=True) as dev, FatEditor(dev) as ed:
        for dirpath, _, files in os.walk(tree):
            rel = os.path.relpath(dirpath, tree)
            base = "" if rel == "." else "/" + rel
            if base:
                ed.mkdir(base)
            for name in files:
                with open(os.path.join(dirpath, name), "rb") as f:
                    ed.write_file(f"{base}/{name}", f, size=os.fstat(f.fileno()).st_size)


def test_fat_write_tree(versus, record_ratio, bench_dir: Path, tree: Path) -> None:  # type: ignore[no-untyped-def]
    blank = empty_volume(bench_dir / "fat-blank.img")
    ours_img, theirs_img = bench_dir / "fat-ours.img", bench_dir / "fat-theirs.img"

    def ours() -> None:
        shutil.copyfile(blank, ours_img)
        strata_in(ours_img, tree)

    def theirs() -> None:
        shutil.copyfile(blank, theirs_img)
        mcopy_in(theirs_img, tree)

    versus(ours, theirs, peer="mcopy -s (write)")
    shutil.copyfile(blank, ours_img)
    script = (
        "import sys; sys.path[:0] = ['benchmarks', 'tests']; "
        "from test_bench_fat import strata_in; from pathlib import Path; "
        f"strata_in(Path({str(ours_img)!r}), Path({str(tree)!r}))"
    )
    ours_rss = measure([sys.executable, "-c", script]).peak_rss
    shutil.copyfile(blank, theirs_img)
    peer = measure(
        ["sh", "-c", f"MTOOLS_SKIP_CHECK=1 mcopy -s -i '{theirs_img}' '{tree}'/* ::/"]
    ).peak_rss
    record_ratio(strata_rss=ours_rss, peer_rss=peer, peer="mcopy -s", rss_ratio=ours_rss / peer)
    assert ours_rss < 256 << 20


def test_fat_read_tree(versus, bench_dir: Path, tree: Path) -> None:  # type: ignore[no-untyped-def]
    image = empty_volume(bench_dir / "fat-read.img")
    mcopy_in(image, tree)
    out = bench_dir / "fat-extract"

    def ours() -> None:
        with RawFileDevice(str(image)) as dev:
            vol = FatVolume(dev)
            for _, entry in vol.walk():
                if not entry.is_dir:
                    for _chunk in vol.iter_file(entry):
                        pass

    def theirs() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        subprocess.run(
            [require("mcopy"), "-s", "-n", "-i", str(image), "::/*", str(out)], check=True, env=ENV
        )

    versus(ours, theirs, peer="mcopy -s (extract)")
