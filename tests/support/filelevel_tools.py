"""File-level layer tests: installs made by mtools (an independent FAT implementation) into a
packaging disk's raw form, turned back into a child of the recorded base, then read back with
mtools and checked with fsck.fat."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from support.tools import require, result_of, run, strata, strata_json

MiB = 1 << 20
FAT_START = MiB  # fixtures/os_disk.sh: partition 1 (EFI, FAT32) at sector 2048
FAT_LENGTH = 64 * MiB
ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}


def mtool(tool: str, *args: str | os.PathLike[str], check: bool = True) -> str:
    proc = subprocess.run([require(tool), *map(str, args)], capture_output=True, text=True, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {args} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def fat_spec(raw: Path) -> str:
    return f"{raw}@@{FAT_START}"


def package(store: Path, layer: str, out: Path, os_layer: str = "win", fmt: str = "vhdx") -> dict:
    out.mkdir(exist_ok=True)
    return result_of(
        strata_json(
            "packaging-disk", "create", "--layer", layer, "--os", os_layer, "--format", fmt,
            "--name", f"{layer}-pkg", "--out", out, "--store", store,
        )
    )  # fmt: skip


def install(pkg: dict, work: Path, steps: Sequence[tuple[str, ...]]) -> Path:
    """Run mtools ``steps`` (``("mcopy", local, "::/x")``: the image is inserted) on the raw
    form of the packaging disk, then make that disk a child of its base again."""
    disk = Path(pkg["disk_path"])
    raw = work / f"{disk.stem}.raw"
    run([*_strata(), "disk", "convert", "-O", "raw", disk, raw])
    for tool, *args in steps:
        mtool(tool, "-i", fat_spec(raw), *args)
    disk.unlink()
    run([*_strata(), "disk", "convert", "-O", pkg["format"], "-B", pkg["base"]["path"], raw, disk])
    return raw


def _strata() -> list[str]:
    import sys

    return [sys.executable, "-m", "strata"]


def finalize(store: Path, pkg: dict) -> dict:
    return result_of(
        strata_json(
            "finalize", "--disk", pkg["disk_path"], "--layer", pkg["layer"],
            "--version", pkg["version"], "--store", store,
        )
    )  # fmt: skip


def export_raw(store: Path, image: str, dest: Path) -> Path:
    proc = strata("image", "export", image, dest, "--target", "raw", "--store", store)
    assert proc.returncode == 0, proc.stderr
    return dest


def extract(raw: Path, start: int, length: int, dest: Path) -> Path:
    """A byte range of ``raw`` as a file of its own (sparse where zero)."""
    with open(raw, "rb") as src, open(dest, "wb") as out:
        out.truncate(length)
        src.seek(start)
        left = length
        while left:
            data = src.read(min(4 * MiB, left))
            if data.strip(b"\0"):
                out.seek(length - left)
                out.write(data)
            left -= len(data)
    return dest


def fsck_fat(volume: Path) -> subprocess.CompletedProcess[str]:
    return run([require("fsck.fat"), "-n", volume], check=False)


def tree(raw: Path) -> dict[str, str]:
    """Every path in the FAT volume (mdir -/ -b), upper-cased keys → as listed."""
    listing = mtool("mdir", "-/", "-b", "-i", fat_spec(raw), "::/")
    paths = [line.strip() for line in listing.splitlines() if line.strip()]
    clean = [p.removeprefix("::").rstrip("/") for p in paths]
    return {p.upper(): p for p in clean if p}


def read(raw: Path, path: str) -> bytes:
    proc = subprocess.run(
        [require("mtype"), "-i", fat_spec(raw), f"::{path}"], capture_output=True, env=ENV
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
