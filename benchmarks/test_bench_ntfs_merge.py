"""Publish merging two independently packaged app layers on NTFS (libntfs-3g in process) beside
ntfs-3g copying the same two trees onto a copy of the OS volume (mount, ``cp -r``, unmount).

strata's side also reads every file back from the store (decompressed, verified) and stores
the merged blocks; ntfs-3g's copies from the page cache.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from conftest import record_cli_publish, scaled
from support.filelevel_tools import app_tree, extract, finalize, package, publish
from support.integrity_tools import (
    PART_SIZE,
    PART_START,
    package_machine,
    windows_disk,
)
from support.ntfs_tools import needs_editor_and_mount
from support.tools import require

pytestmark = needs_editor_and_mount()


def _copy_into(tree: Path) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        shutil.copytree(tree, root / "Program Files" / tree.name)

    return change


def test_ntfs_file_level_publish(
    tmp_path: Path, versus: Callable[..., float], record_ratio: Callable[..., None]
) -> None:
    files = scaled(1000, 100)
    os_raw = windows_disk(tmp_path)
    store = tmp_path / "store"
    subprocess.run(
        [*_strata(), "os", "import", "win", str(os_raw), "--version", "1", "--store", str(store)],
        check=True,
        capture_output=True,
    )
    trees = []
    for seed, app in enumerate(("appA", "appB")):
        trees.append(app_tree(tmp_path, app, files, seed, smallest=2048, spread=3000))
        pkg = package(store, app, tmp_path / f"out-{app}")
        work = tmp_path / f"work-{app}"
        work.mkdir()
        package_machine(pkg, work, _copy_into(trees[-1]))
        finalize(store, pkg)
    count = [0]

    def ours() -> None:
        count[0] += 1
        result = publish(store, f"img{count[0]}", "appA", "appB")
        assert result["merge"] == "file" and result["ntfs_volumes"] == [1]

    volume = tmp_path / "peer.vol"

    def theirs() -> None:
        extract(os_raw, PART_START, PART_SIZE, volume)
        with tempfile.TemporaryDirectory(prefix="ntfs-peer-") as mnt:
            subprocess.run([require("ntfs-3g"), volume, mnt], check=True)
            try:
                subprocess.run(["cp", "-r", *trees, f"{mnt}/"], check=True)
            finally:
                subprocess.run(["umount", mnt], check=True)

    versus(ours, theirs, peer="ntfs-3g mount + cp -r (both trees)")
    record_cli_publish(record_ratio, store, 2 * files, "NTFS file-level publish")


def _strata() -> list[str]:
    import sys

    return [sys.executable, "-m", "strata"]
