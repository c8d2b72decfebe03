"""A raw image written onto a block device (a loop device here): every byte of the image,
zero runs included, read back by qemu-img from the device; the device refused while mounted,
for other formats, and when too small, with its bytes untouched."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.images import MiB
from support.tools import qemu_img, require, run, strata

SIZE = 64 * MiB
GARBAGE = b"\xaa"  # what the device held before: an image's zero runs must overwrite it


def _loop(backing: Path, size: int) -> Iterator[str]:
    backing.write_bytes(GARBAGE * size)
    attached = subprocess.run(
        [require("losetup"), "--find", "--show", backing], capture_output=True, text=True
    )
    if attached.returncode != 0:
        pytest.skip(f"no loop device: losetup said {attached.stderr.strip()!r} (needs root)")
    device = attached.stdout.strip()
    try:
        yield device
    finally:
        run([require("losetup"), "-d", device])


@pytest.fixture
def device(tmp_path: Path) -> Iterator[str]:
    yield from _loop(tmp_path / "device.img", SIZE)


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Path]:
    """A VHDX made by qemu-img with data at the start, the middle and the end, and its raw."""
    raw = tmp_path / "source.raw"
    qemu_img("create", "-f", "raw", raw, str(SIZE))
    for pattern, offset, length in (
        (0x11, 0, MiB),
        (0x22, 30 * MiB + 4096, 3 * MiB),
        (0x33, SIZE - 512, 512),
    ):
        run([require("qemu-io"), "-f", "raw", "-c", f"write -P {pattern} {offset} {length}", raw])
    vhdx = tmp_path / "source.vhdx"
    qemu_img("convert", "-f", "raw", "-O", "vhdx", raw, vhdx)
    return raw, vhdx


def _digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_convert_onto_a_device_writes_every_byte(device: str, source: tuple[Path, Path]) -> None:
    raw, vhdx = source
    proc = strata("disk", "convert", "-O", "raw", vhdx, device)
    assert proc.returncode == 0, proc.stderr
    compared = qemu_img("compare", "-f", "raw", "-F", "raw", raw, device, check=False)
    assert compared.returncode == 0, compared.stdout + compared.stderr


def test_other_formats_and_create_are_refused(
    device: str, source: tuple[Path, Path], tmp_path: Path
) -> None:
    before = _digest(tmp_path / "device.img")
    for args in (
        ("disk", "convert", "-O", "vhd", source[1], device),
        ("disk", "convert", "-O", "vmdk", source[1], device),
        ("disk", "create", "-O", "raw", device, "1M"),
    ):
        proc = strata(*args)
        assert proc.returncode == 3, proc.stderr
        assert f"cannot write {device}: it is a block device" in proc.stderr
    assert _digest(tmp_path / "device.img") == before


def test_a_mounted_device_is_refused(
    device: str, source: tuple[Path, Path], tmp_path: Path
) -> None:
    run([require("mkfs.ext4"), "-q", device])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run(["mount", device, mnt])
    try:
        proc = strata("disk", "convert", "-O", "raw", source[1], device)
    finally:
        run(["umount", mnt])
    assert proc.returncode == 3 and "the device is in use" in proc.stderr, proc.stderr
    checked = subprocess.run([require("e2fsck"), "-fn", device], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_a_device_smaller_than_the_image_is_refused(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    backing = tmp_path / "small.img"
    for small in _loop(backing, SIZE // 2):
        proc = strata("disk", "convert", "-O", "raw", source[1], small)
        assert proc.returncode == 3, proc.stderr
        assert f"the device holds {SIZE // 2} bytes, the image {SIZE}" in proc.stderr
    assert backing.read_bytes() == GARBAGE * (SIZE // 2)


def test_a_character_device_is_refused(source: tuple[Path, Path]) -> None:
    proc = strata("disk", "convert", "-O", "raw", source[1], "/dev/null")
    assert proc.returncode == 3
    assert "cannot write /dev/null: it is a character device" in proc.stderr
