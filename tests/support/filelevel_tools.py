"""File-level layer tests: installs made by mtools (an independent FAT implementation) into a
packaging disk's raw form, turned back into a child of the recorded base, then read back with
mtools and checked with fsck.fat."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from strata.ops import disk, image, layers
from strata.store import Manifest, Store

from support.tools import require, run

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
    req = layers.PackagingRequest(
        layer=layer, os=os_layer, fmt=fmt, name=f"{layer}-pkg", out=str(out)
    )
    return layers.create_packaging_disk(req, store=store)


def to_raw(pkg: dict, raw: Path) -> Path:
    disk.convert(disk.OpenSpec(pkg["disk_path"]), str(raw), "raw")
    return raw


def back_to_child(pkg: dict, raw: Path) -> None:
    """Replace the packaging disk by a child of its base holding what differs in ``raw``."""
    Path(pkg["disk_path"]).unlink()
    base = disk.OpenSpec(pkg["base"]["path"])
    disk.convert(disk.OpenSpec(str(raw)), pkg["disk_path"], pkg["format"], backing=base)


def install(pkg: dict, work: Path, steps: Sequence[tuple[str, ...]]) -> Path:
    """Run mtools ``steps`` (``("mcopy", local, "::/x")``: the image is inserted) on the raw
    form of the packaging disk, then make that disk a child of its base again."""
    raw = to_raw(pkg, work / f"{Path(pkg['disk_path']).stem}.raw")
    for tool, *args in steps:
        mtool(tool, "-i", fat_spec(raw), *args)
    back_to_child(pkg, raw)
    return raw


def whole_disk_fat_os(
    root: Path, store: Path, populate: Callable[[Path], None] | None = None
) -> Path:
    """OS layer ``win:1`` in ``store``: a 64 MiB disk that is one FAT volume, no partition
    table (mkfs.fat), filled by ``populate(image)`` first when given; the image's path."""
    os_raw = root / "os.img"
    run([require("qemu-img"), "create", "-f", "raw", os_raw, "64M"])
    run([require("mkfs.fat"), os_raw])
    if populate is not None:
        populate(os_raw)
    layers.import_os("win", "1", str(os_raw), store=store)
    return os_raw


def install_whole_disk_file(
    store: Path,
    root: Path,
    layer: str,
    path: str,
    data: bytes,
    edit: Callable[[Path], None] | None = None,
) -> dict:
    """A layer adding ``data`` at ``path`` of a whole-disk FAT (a "superfloppy"), made as a
    packaging machine would: packaged, written by mtools (then ``edit`` of the raw disk, if
    given), finalized; the finalize result."""
    work = root / f"work-{layer}"
    work.mkdir()
    pkg = package(store, layer, root / f"out-{layer}")
    raw = to_raw(pkg, work / "pkg.raw")
    (work / "file").write_bytes(data)
    mtool("mcopy", "-i", raw, work / "file", f"::{path}")  # no @@offset: the FAT is the disk
    if edit is not None:
        edit(raw)
    back_to_child(pkg, raw)
    return finalize(store, pkg)


def finalize(store: Path, pkg: dict) -> dict:
    return layers.finalize(pkg["disk_path"], pkg["layer"], pkg["version"], store=store)


def publish(store: Path, name: str, *apps: str) -> dict:
    tpl = image.template_from({"name": name, "os": "win", "apps": list(apps)})
    return image.publish(tpl, store=store)


def export_raw(store: Path, name: str, dest: Path) -> Path:
    image.export(name, str(dest), target_name="raw", store=store)
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


def tamper_manifest(store: Path, ref: str, change: Callable[[Manifest], None]) -> None:
    """Store a changed copy of layer version ``ref``'s manifest and point the catalog at it
    (what a damaged or hostile store holds: the manifest's own checksum is right)."""
    name, version = ref.split(":")
    st = Store(store)
    try:
        row = st.catalog.version(name, version)
        manifest = st.get_manifest(bytes.fromhex(row["manifest"]))
        manifest.tables = {k: (s, rows.copy()) for k, (s, rows) in manifest.tables.items()}
        change(manifest)
        mid = st.put_manifest(manifest)
    finally:
        st.close()
    with sqlite3.connect(store / "catalog.db") as db:
        db.execute(
            "UPDATE versions SET manifest = ? WHERE name = ? "
            "AND layer = (SELECT id FROM layers WHERE name = ?)",
            (mid, version, name),
        )


def app_tree(
    root: Path, name: str, files: int, seed: int, smallest: int = 4096, spread: int = 5000
) -> Path:
    """An app's files to install: ``files`` random files of ``smallest`` to ``smallest +
    spread`` bytes, in folders of 50, under ``root/src-NAME/NAME``."""
    rng = np.random.default_rng(seed)
    top = root / f"src-{name}" / name
    for n in range(files):
        folder = top / f"dir{n // 50:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = rng.integers(0, 256, smallest + n % spread, dtype=np.uint8).tobytes()
        (folder / f"file{n % 50:03d}.dat").write_bytes(data)
    return top
