"""Damaged VHDs: each fault gets a specific strata.errors exception naming structure and offset,
`strata disk check` lists it, and a fuzzer finds nothing else escaping and no hang."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest

from strata.blockdev import RawFileDevice
from strata.errors import CorruptImage, StrataError, TruncatedImage
from strata.formats import registry
from strata.formats.registry import WriteRequest
from strata.formats.vhd import structs as s
from strata.formats.vhd.check import check
from strata.formats.vhd.reader import VhdDevice
from strata.formats.vhd.writer import FileWriter, Plan, _copy
from strata.ops import disk as ops

from support.images import MiB, write_sparse_raw
from support.tools import strata
from support.vhd_tools import be32, patch, put_be32, read_range, refresh_checksum

HEADER = 512
BAT = 1536


@pytest.fixture
def dynamic(tmp_path: Path) -> Path:
    raw = write_sparse_raw(tmp_path / "src.raw", 16 * MiB, [(0, 64 << 10), (9 * MiB, MiB)])
    out = tmp_path / "d.vhd"
    ops.convert(ops.OpenSpec(str(raw)), str(out), "vhd")
    return out


def _expect(path: Path, exc: type[Exception], structure: str, field: str, offset: int) -> None:
    with pytest.raises(exc) as info:
        VhdDevice(str(path))
    err = info.value
    assert isinstance(err, CorruptImage)
    assert (err.structure, err.field, err.offset) == (structure, field, offset), err
    assert str(path) in err.message and f"{offset:#x}" in err.message
    proc = strata("disk", "check", path)
    assert proc.returncode == 1
    assert f"{structure} field {field} at file offset {offset:#x}" in proc.stdout, proc.stdout
    with pytest.raises(exc):
        ops.info(ops.OpenSpec(str(path)))


def test_bad_footer_checksum(dynamic: Path) -> None:
    footer = dynamic.stat().st_size - 512
    # The creator application ("win ", a constant): the checksum is a plain byte sum, so
    # patching the timestamp (offset 24) left it valid whenever the time's four bytes
    # happened to add up to those of "XXXX" (a flaky test, seen once).
    patch(dynamic, footer + 28, b"XXXX")
    _expect(dynamic, CorruptImage, "footer", "checksum", footer + 64)
    assert "footer copy" in strata("disk", "check", dynamic).stdout
    opened = strata("disk", "info", dynamic)
    assert opened.returncode == 5 and "Traceback" not in opened.stderr
    assert f"file offset {footer + 64:#x}" in opened.stderr


def test_bad_fixed_footer_checksum(tmp_path: Path) -> None:
    out = tmp_path / "f.vhd"
    ops.create(str(out), "vhd", 4 * MiB, ["subformat=fixed"])
    patch(out, 4 * MiB + 30, b"\x99")
    _expect(out, CorruptImage, "footer", "checksum", 4 * MiB + 64)


def test_bad_dynamic_header_checksum(dynamic: Path) -> None:
    patch(dynamic, HEADER + 900, b"\x01")  # reserved bytes, counted by the checksum
    _expect(dynamic, CorruptImage, "dynamic header", "checksum", HEADER + 36)


def test_bat_entry_past_eof(dynamic: Path) -> None:
    beyond = dynamic.stat().st_size // 512 + 8
    put_be32(dynamic, BAT + 4 * 4, beyond)
    _expect(dynamic, CorruptImage, "BAT", "entry[4]", BAT + 16)


def test_bat_entry_over_metadata(dynamic: Path) -> None:
    put_be32(dynamic, BAT + 4 * 2, 2)  # block 2 would sit on the dynamic header
    _expect(dynamic, CorruptImage, "BAT", "entry[2]", BAT + 8)


def test_truncated_dynamic(dynamic: Path) -> None:
    size = dynamic.stat().st_size
    os.truncate(dynamic, size - 3 * MiB)
    _expect(dynamic, TruncatedImage, "footer", "cookie", size - 3 * MiB - 512)


def test_truncated_fixed_keeping_its_footer(tmp_path: Path) -> None:
    out = tmp_path / "f.vhd"
    ops.create(str(out), "vhd", 4 * MiB, ["subformat=fixed"])
    footer = read_range(out, 4 * MiB, 512)
    os.truncate(out, 2 * MiB)
    patch(out, 2 * MiB, footer)
    _expect(out, TruncatedImage, "file", "size", 2 * MiB + 512)


def test_block_size_not_power_of_two(dynamic: Path) -> None:
    put_be32(dynamic, HEADER + 32, 3 * MiB)
    refresh_checksum(dynamic, HEADER, 1024, 36)
    _expect(dynamic, CorruptImage, "dynamic header", "block_size", HEADER + 32)


def test_check_reports_every_problem(dynamic: Path) -> None:
    put_be32(dynamic, BAT + 4 * 6, dynamic.stat().st_size // 512 + 99)
    put_be32(dynamic, BAT + 4 * 7, 1)
    problems = check(str(dynamic))
    where = {(p.structure, p.field, p.offset) for p in problems}
    assert ("BAT", "entry[6]", BAT + 24) in where
    assert ("BAT", "entry[7]", BAT + 28) in where


def test_clean_images_have_no_findings(dynamic: Path) -> None:
    assert check(str(dynamic)) == []
    assert be32(dynamic, BAT) != 0xFFFFFFFF


# -- fuzzing ------------------------------------------------------------------------------


def _template(tmp_path: Path, kind: str) -> Path:
    """Tiny images (4 KiB blocks) so that each mutation is cheap to write, open and check."""
    raw = write_sparse_raw(tmp_path / f"{kind}.raw", 256 << 10, [(0, 8192), (100 << 10, 20000)])
    path = tmp_path / f"{kind}.vhd"
    disk_type = {"fixed": s.DISK_FIXED, "dynamic": s.DISK_DYNAMIC}[kind]
    writer = FileWriter(str(path), Plan.new(256 << 10, disk_type, 4096))
    with RawFileDevice(str(raw)) as src:
        _copy(WriteRequest(src, str(path), {}), writer)
        writer.finish()
    writer.close()
    return path


def _child(tmp_path: Path, parent: Path) -> Path:
    child = tmp_path / "child.vhd"
    ops.create(str(child), "vhd", None, parent=ops.OpenSpec(str(parent)))
    with registry.open_image(str(child), writable=True) as disk:
        disk.write(1000, b"\x42" * 3000)
    return child


def _mutate(data: bytearray, rng: random.Random, hot: list[tuple[int, int]]) -> None:
    for _ in range(rng.randint(1, 4)):
        lo, hi = rng.choice(hot)
        at = rng.randrange(lo, min(hi, len(data)))
        choice = rng.random()
        if choice < 0.5:
            data[at] = rng.randrange(256)
        elif choice < 0.8 and at + 4 <= len(data):
            data[at : at + 4] = rng.choice(
                [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x00\x10\x01"]
            )
        else:
            data[at] ^= 1 << rng.randrange(8)


def _fix_checksums(data: bytearray) -> None:
    def fix(start: int, length: int, field_at: int) -> None:
        region = data[start : start + length]
        region[field_at : field_at + 4] = bytes(4)
        data[start + field_at : start + field_at + 4] = (~sum(region) & 0xFFFFFFFF).to_bytes(
            4, "big"
        )

    fix(len(data) - 512, 512, 64)
    if data[:8] == s.FOOTER_COOKIE:
        fix(0, 512, 64)
        fix(512, 1024, 36)


def _exercise(path: Path) -> None:
    try:
        with registry.open_image(str(path)) as disk:
            list(disk.extents())
            size = disk.size
            disk.read(0, min(size, 8192))
            disk.read(max(0, size - 4096), min(size, 4096))
            mid = size // 2 // 512 * 512
            disk.read(mid, min(65536, size - mid))
    except StrataError:
        pass
    check(str(path))


def test_fuzz_headers(tmp_path: Path) -> None:
    rng = random.Random(20261121)
    templates = [_template(tmp_path, "dynamic"), _template(tmp_path, "fixed")]
    templates.append(_child(tmp_path, templates[0]))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(templates[0], work / templates[0].name)  # the child's parent, for open_image
    start, cases = time.monotonic(), 0
    for index in range(2400):
        template = templates[index % len(templates)]
        original = template.read_bytes()
        data = bytearray(original)
        size = len(data)
        hot = [(size - 512, size)]
        if data[:8] == s.FOOTER_COOKIE:
            hot += [(0, 512), (512, 1536), (1536, 1536 + 512), (1536, 4096)]
        _mutate(data, rng, hot)
        if rng.random() < 0.5:
            _fix_checksums(data)
        target = work / f"m-{template.name}"
        target.write_bytes(data)
        _exercise(target)
        cases += 1
        assert time.monotonic() - start < 120, f"fuzzing too slow after {cases} cases"
    assert cases >= 2000
