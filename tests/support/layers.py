"""Shared steps of the layer tests: an OS disk made by real tools, writes mirrored on a raw copy."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from strata.formats import registry

from support.tools import qemu_img, require, run

ROOT = Path(__file__).resolve().parents[2]
Write = tuple[int, bytes]


def make_os_disk(path: Path, size_mib: int = 256) -> Path:
    for tool in ("sgdisk", "mkfs.fat", "mke2fs", "mcopy"):
        require(tool)
    run(["bash", ROOT / "fixtures" / "os_disk.sh", path, str(size_mib)])
    return path


def apply_with_strata(image: Path, writes: Sequence[Write]) -> None:
    with registry.open_image(str(image), writable=True) as disk:
        for offset, data in writes:
            disk.write(offset, data)
        disk.flush()


def apply_to_raw(raw: Path, writes: Sequence[Write]) -> None:
    with open(raw, "r+b") as f:
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def qemu_io_write(image: Path, fmt: str, offset: int, length: int, pattern: int) -> None:
    run([require("qemu-io"), "-f", fmt, "-c", f"write -P {pattern:#x} {offset} {length}", image])


def expected_copy(base_raw: Path, dest: Path) -> Path:
    shutil.copyfile(base_raw, dest)
    return dest


def qemu_format(fmt: str) -> str:
    return {"vhd": "vpc"}.get(fmt, fmt)


def compare_with_qemu(expected_raw: Path, image: Path, fmt: str) -> int:
    args = ["compare", "-f", "raw", "-F", qemu_format(fmt), expected_raw, image]
    if fmt == "vhd":
        args = [
            "compare",
            "--image-opts",
            f"driver=raw,file.filename={expected_raw}",
            f"driver=vpc,force_size_calc=current_size,file.filename={image}",
        ]
    return qemu_img(*args, check=False).returncode


def sigkill_after(cmd: Sequence[str], seconds: float) -> int:
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode


def finalize_args(pkg: dict, store: Path | str) -> list[str]:
    """``strata finalize`` of the packaging disk ``pkg`` (a packaging-disk create result)."""
    return [
        "finalize",
        "--disk",
        pkg["disk_path"],
        "--layer",
        pkg["layer"],
        "--version",
        pkg["version"],
        "--store",
        str(store),
    ]
