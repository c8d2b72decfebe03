"""VMDK corruption set and fuzzing: specific errors, nothing else raised, no hang."""

from __future__ import annotations

import random
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.errors import CorruptImage, PathOutsideAllowed, StrataError, TruncatedImage
from strata.formats import registry
from strata.formats.vmdk.check import check as vmdk_check
from strata.ops import disk as ops

from support.images import MiB, write_sparse_raw
from support.tools import strata


def _image(tmp_path: Path, name: str, *opts: str, size: int = 4 * MiB) -> Path:
    ref = write_sparse_raw(tmp_path / f"{name}.raw", size, [(0, 100_000), (size - 65536, 4096)])
    out = tmp_path / f"{name}.vmdk"
    ops.convert(ops.OpenSpec(str(ref)), str(out), "vmdk", list(opts))
    return out


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _u64(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return int(struct.unpack("<Q", f.read(8))[0])


def _read_all(path: Path) -> None:
    with registry.open_image(str(path), "vmdk") as disk:
        disk.read(0, disk.size)


def test_bad_magic(tmp_path: Path) -> None:
    image = _image(tmp_path, "m")
    _poke(image, 0, b"XDMV")
    with pytest.raises(CorruptImage) as info:
        registry.open_layer(str(image), "vmdk")
    assert info.value.structure == "sparse header" and info.value.field == "magic"
    proc = strata("disk", "info", "-f", "vmdk", image)
    assert proc.returncode == 5 and "magic" in proc.stderr


def test_grain_table_pointer_past_eof(tmp_path: Path) -> None:
    image = _image(tmp_path, "g")
    gd = _u64(image, 0x38) * 512
    _poke(image, gd, struct.pack("<I", 0x00FF_FFFF))
    with pytest.raises(CorruptImage) as info:
        _read_all(image)
    assert info.value.structure == "grain directory" and info.value.field == "GDE[0]"
    assert info.value.offset == gd
    problems = ops.check(ops.OpenSpec(str(image)))
    assert any(p.field == "GDE[0]" and "past the end" in p.message for p in problems)


def test_grain_entry_past_eof(tmp_path: Path) -> None:
    image = _image(tmp_path, "e")
    gd = _u64(image, 0x38) * 512
    gt = struct.unpack("<I", image.read_bytes()[gd : gd + 4])[0] * 512
    _poke(image, gt, struct.pack("<I", 0x0FFF_0000))
    with pytest.raises(CorruptImage, match="past the end"):
        _read_all(image)
    problems = ops.check(ops.OpenSpec(str(image)))
    assert any(p.field == "GTE[0]" for p in problems)


def test_redundant_tables_differing(tmp_path: Path) -> None:
    image = _image(tmp_path, "r")
    rgd = _u64(image, 0x30) * 512
    rgt = struct.unpack("<I", image.read_bytes()[rgd : rgd + 4])[0] * 512
    _poke(image, rgt + 4, struct.pack("<I", 12345))
    _read_all(image)  # reads use the primary tables
    problems = ops.check(ops.OpenSpec(str(image)))
    assert [(p.structure, p.field) for p in problems] == [("redundant grain table", "RGTE[1]")]
    assert problems[0].offset == rgt + 4
    proc = strata("disk", "check", image)
    assert proc.returncode == 1 and "redundant grain table" in proc.stdout
    _poke(image, rgd, struct.pack("<I", 0))  # the GT is absent only in the copy
    problems = ops.check(ops.OpenSpec(str(image)))
    assert "redundant grain directory" in {p.structure for p in problems}


def test_malformed_descriptor(tmp_path: Path) -> None:
    image = _image(tmp_path, "d")
    data = image.read_bytes()
    at = data.index(b"createType=")
    _poke(image, at, b"createType!")
    with pytest.raises(CorruptImage) as info:
        registry.open_layer(str(image), "vmdk")
    assert info.value.structure == "descriptor" and info.value.offset == 512
    split = _image(tmp_path, "s", "subformat=twoGbMaxExtentSparse")
    split.write_text(split.read_text().replace("RW 8192 SPARSE", "RW lots SPARSE"))
    with pytest.raises(CorruptImage, match="line"):
        registry.open_layer(str(split), "vmdk")
    split.write_text(split.read_text().replace("RW lots SPARSE", 'RW 8192 SPARSE "../../x"'))
    with pytest.raises(StrataError):
        registry.open_layer(str(split), "vmdk")


def test_an_extent_outside_its_descriptors_directory_is_refused(tmp_path: Path) -> None:
    """Extents lie beside their descriptor: one elsewhere is refused, and the refusal does not
    point at --allow-dir, which allows parents only."""
    split = _image(tmp_path, "s", "subformat=twoGbMaxExtentSparse")
    split.write_text(split.read_text().replace('"s-s001.vmdk"', '"../x/s-s001.vmdk"'))
    with pytest.raises(PathOutsideAllowed) as refused:
        registry.open_layer(str(split), "vmdk")
    assert refused.value.message == (
        f"{tmp_path}/../x/s-s001.vmdk: a VMDK extent must lie in its descriptor's directory "
        f"{tmp_path}"
    )


def test_truncated_stream(tmp_path: Path) -> None:
    image = _image(tmp_path, "t", "subformat=streamOptimized")
    with open(image, "r+b") as f:
        f.truncate(image.stat().st_size // 2 // 512 * 512)
    with pytest.raises(TruncatedImage) as info:
        registry.open_layer(str(image), "vmdk")
    assert info.value.structure == "stream footer"
    assert ops.check(ops.OpenSpec(str(image)))[0].structure == "stream footer"


def test_damaged_grain_data(tmp_path: Path) -> None:
    image = _image(tmp_path, "z", "subformat=streamOptimized")
    _poke(image, 65536 + 12, b"\xff" * 64)  # first grain's deflate stream
    with pytest.raises(CorruptImage, match="deflate"):
        _read_all(image)
    assert any(p.structure == "grain marker" for p in vmdk_check(str(image)))


# -- fuzzing ---------------------------------------------------------------------------------
class Hang(Exception):
    pass


def _alarm(_sig: int, _frame: object) -> None:
    raise Hang


def _mutations(seed: bytes, count: int, rng: random.Random, hot: int) -> Iterator[bytes]:
    for _ in range(count):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 6)):
            limit = hot if rng.random() < 0.8 else len(data)
            at = rng.randrange(limit)
            kind = rng.random()
            if kind < 0.6:
                data[at] = rng.randrange(256)
            elif kind < 0.8:
                data[at : at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x01\0\0\0"])
            else:
                del data[rng.randrange(len(data)) :]
                break
        yield bytes(data)


def _exercise(path: Path) -> bool:
    """True when strata refused or flagged the image."""
    refused = False
    try:
        with registry.open_layer(str(path), "vmdk") as layer:
            list(layer.extents())
            layer.read(0, min(layer.size, 4 * MiB))
    except StrataError:
        refused = True
    return bool([p for p in vmdk_check(str(path)) if p.severity == "error"]) or refused


@pytest.mark.parametrize(
    ("name", "opts", "count"),
    [
        ("sparse", ("subformat=monolithicSparse",), 900),
        ("stream", ("subformat=streamOptimized",), 900),
        ("split", ("subformat=twoGbMaxExtentSparse",), 300),
    ],
)
def test_fuzz(tmp_path: Path, name: str, opts: tuple[str, ...], count: int) -> None:
    image = _image(tmp_path, name, *opts, size=2 * MiB)
    seed = image.read_bytes()
    hot = 0x1_0000 if name == "sparse" else len(seed)
    rng = random.Random(name)
    target = tmp_path / f"{name}.vmdk"
    old = signal.signal(signal.SIGALRM, _alarm)
    start = time.monotonic()
    flagged = 0
    try:
        for n, mutated in enumerate(_mutations(seed, count, rng, hot)):
            target.write_bytes(mutated)
            signal.setitimer(signal.ITIMER_REAL, 5.0)
            try:
                flagged += _exercise(target)
            except Hang:
                pytest.fail(f"mutation {n} hung")
            except StrataError:
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - start < 90
    assert flagged > count // 10, f"only {flagged} of {count} mutations were noticed"


def test_stream_markers_damaged(tmp_path: Path) -> None:
    image = _image(tmp_path, "k", "subformat=streamOptimized")
    _poke(image, 65536, struct.pack("<Q", 128 * 5))  # first grain claims another LBA
    with pytest.raises(CorruptImage, match="marker LBA"):
        _read_all(image)
    problems = vmdk_check(str(image))
    assert any(p.structure == "grain table" and p.field == "GTE[0]" for p in problems)
    fresh = _image(tmp_path, "u", "subformat=streamOptimized")
    data = fresh.read_bytes()
    gd_marker = len(data) - 3 * 512 - 512  # GD (one sector) sits before the footer marker
    assert struct.unpack_from("<QII", data, gd_marker - 512)[2] == 2
    _poke(fresh, gd_marker - 512 + 12, struct.pack("<I", 9))
    problems = vmdk_check(str(fresh))
    assert any(p.structure == "stream" and "unknown marker type 9" in p.message for p in problems)
