"""NTFS full-volume listing (the bulk numpy MFT scan) beside sleuthkit ``fls -r -p``.

References: sleuthkit 4.x fls as the peer.  The volume (mkntfs + files written through an
ntfs-3g mount, fixtures/ntfs_volume.py) is built lazily and cached under build/fixtures/ntfs:
200 000 files full size (about 100 s to build once), 3 000 in smoke runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from strata.blockdev import RawFileDevice
from strata.fs.ntfs import NtfsVolume

from conftest import scaled
from support.ntfs_tools import volume
from support.tools import measure, require

FILES = scaled(200_000, 3_000)
SIZE = "2G" if FILES > 50_000 else "512M"
SCAN = (
    "import sys; from strata.blockdev import RawFileDevice; from strata.fs.ntfs import NtfsVolume;"
    "listing = NtfsVolume(RawFileDevice(sys.argv[1])).scan(); print(len(listing))"
)


@pytest.fixture(scope="module")
def image() -> Path:
    return volume(FILES, SIZE)


def listing(image: Path) -> int:
    with RawFileDevice(str(image)) as dev:
        scan = NtfsVolume(dev).scan()
        return len(scan.paths) + int(scan.size.sum() > 0)


def fls(image: Path) -> None:
    subprocess.run([require("fls"), "-r", "-p", str(image)], check=True, stdout=subprocess.DEVNULL)


def test_ntfs_full_listing(versus, record_ratio, image: Path) -> None:  # type: ignore[no-untyped-def]
    assert listing(image) > FILES
    versus(lambda: listing(image), lambda: fls(image), peer="fls -r -p", target=0.2)
    ours = measure([sys.executable, "-c", SCAN, image])
    peer = measure([require("fls"), "-r", "-p", image])
    assert ours.returncode == 0 and int(ours.stdout) > FILES
    record_ratio(
        files=FILES,
        strata_rss=ours.peak_rss,
        peer_rss=peer.peak_rss,
        peer="fls -r -p",
        rss_ratio=round(ours.peak_rss / peer.peak_rss, 2),
        strata_process_s=round(ours.seconds, 3),
        peer_process_s=round(peer.seconds, 3),
    )


def cli_listing(image: Path) -> None:
    """What a person at a shell runs: the interpreter, the imports, the scan and every line
    printed (to /dev/null, as fls's are)."""
    subprocess.run(
        [sys.executable, "-m", "strata", "fs", "ls", "-r", str(image)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_ntfs_cli_listing(versus, record_ratio, image: Path) -> None:  # type: ignore[no-untyped-def]
    """``strata fs ls -r`` beside ``fls -r -p``, both as processes writing every entry."""
    versus(lambda: cli_listing(image), lambda: fls(image), peer="fls -r -p (CLI)", target=0.2)
    ours = measure([sys.executable, "-m", "strata", "fs", "ls", "-r", image])
    peer = measure([require("fls"), "-r", "-p", image])
    assert ours.returncode == 0 and ours.stdout.count("\n") > FILES
    # Start-up alone (interpreter, numpy, click, strata's modules): no part of fls's time.
    startup = measure([sys.executable, "-m", "strata", "fs", "--help"])
    record_ratio(
        files=FILES,
        strata_rss=ours.peak_rss,
        peer_rss=peer.peak_rss,
        rss_ratio=round(ours.peak_rss / peer.peak_rss, 2),
        strata_startup_s=round(startup.seconds, 3),
    )


def test_ntfs_cat_by_path(versus, record_ratio, image: Path) -> None:  # type: ignore[no-untyped-def]
    """``strata fs cat IMAGE PATH`` (the path found through the directory indexes, no MFT
    scan) beside sleuthkit's ``ifind -n PATH`` then ``icat`` of the inode it prints."""
    path = "/many/d0001/f000501.txt"
    strata_cmd = [sys.executable, "-m", "strata", "fs", "cat", str(image), path]
    expected = subprocess.run(strata_cmd, check=True, capture_output=True).stdout

    def peer() -> bytes:
        found = subprocess.run(
            [require("ifind"), "-n", path, str(image)], check=True, capture_output=True, text=True
        )
        return subprocess.run(
            [require("icat"), str(image), found.stdout.strip()], check=True, capture_output=True
        ).stdout

    assert peer() == expected and expected
    versus(
        lambda: subprocess.run(strata_cmd, check=True, stdout=subprocess.DEVNULL),
        peer,
        peer="ifind -n + icat",
    )
    with RawFileDevice(str(image)) as dev:
        vol = NtfsVolume(dev)
        start = time.perf_counter()
        vol.stat(path)
        lookup = time.perf_counter() - start
        assert vol._listing is None
    record_ratio(files=FILES, in_process_lookup_ms=round(lookup * 1e3, 2))
