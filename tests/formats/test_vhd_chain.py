"""Differencing VHD chains written by strata, read back by libvhdi (set_parent) and strata."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from construct import Container

from strata.errors import (
    CorruptImage,
    IntegrityError,
    InvalidInput,
    NotFound,
    PathOutsideAllowed,
)
from strata.formats import registry
from strata.formats.vhd.layout import Layout, Locator
from strata.formats.vhd.reader import VhdDevice, parent_candidates
from strata.ops import disk as ops

from support.images import MiB, random_bytes, write_sparse_raw
from support.tools import qemu_compare, qemu_img, require, result_of, strata
from support.tools import strata_json as sj
from support.vhd_tools import pyvhdi_chain

SIZE = 24 * MiB + 3 * 512


def _random_writes(path: Path, expected: bytearray, rng: random.Random, count: int) -> None:
    with registry.open_image(str(path), writable=True) as disk:
        for _ in range(count):
            length = rng.choice([1, 100, 512, 4096, 70000, 2 * MiB + 513])
            offset = rng.randrange(0, SIZE - length)
            data = random_bytes(length, rng.randrange(1 << 30))
            disk.write(offset, data)
            expected[offset : offset + length] = data


def _assert_chain_reads(paths: list[Path], expected: bytes) -> None:
    top = pyvhdi_chain(paths)[0]
    assert top.media_size == len(expected)
    assert top.read_buffer_at_offset(len(expected), 0) == expected
    with registry.open_image(str(paths[0])) as disk:
        assert disk.read(0, disk.size) == expected


@pytest.fixture
def chain(tmp_path: Path) -> tuple[list[Path], bytearray]:
    """base (dynamic, converted) <- c1 <- c2 <- c3, each child changed by random writes."""
    raw = write_sparse_raw(tmp_path / "src.raw", SIZE, [(0, MiB), (5 * MiB - 700, 3 * MiB)])
    expected = bytearray(raw.read_bytes())
    base = tmp_path / "base.vhd"
    ops.convert(ops.OpenSpec(str(raw)), str(base), "vhd")
    rng = random.Random(3)
    paths = [base]
    for depth in (1, 2, 3):
        child = tmp_path / f"c{depth}.vhd"
        ops.create(str(child), "vhd", None, parent=ops.OpenSpec(str(paths[0])))
        _random_writes(child, expected, rng, 12)
        paths.insert(0, child)
    return paths, expected


def test_depth_three_chain_reads_alike_in_libvhdi(chain: tuple[list[Path], bytearray]) -> None:
    paths, expected = chain
    _assert_chain_reads(paths, bytes(expected))
    assert strata("disk", "check", paths[0]).returncode == 0
    for path in paths[1:]:
        assert ops.check(ops.OpenSpec(str(path))) == []
    info = result_of(sj("disk", "info", paths[0]))
    assert [layer["filename"] for layer in info["backing-chain"]] == [str(p) for p in paths[1:]]


def test_children_hold_only_what_was_written(chain: tuple[list[Path], bytearray]) -> None:
    paths, _ = chain
    with VhdDevice(str(paths[0])) as top:
        present = sum(e.length for e in top.extents() if e.state.name == "DATA")
    assert 0 < present < SIZE // 2


def test_convert_backing_stores_only_changed_sectors(tmp_path: Path) -> None:
    base_raw = write_sparse_raw(tmp_path / "base.raw", SIZE, [(0, 8 * MiB)], seed=4)
    new = bytearray(base_raw.read_bytes())
    changes = [(512, 512), (3 * MiB - 1024, 4096), (20 * MiB, 777)]
    for offset, length in changes:
        new[offset : offset + length] = random_bytes(length, offset)
    new[7 * MiB : 7 * MiB + 512] = bytes(512)  # data zeroed in the child is a change too
    new_raw = tmp_path / "new.raw"
    new_raw.write_bytes(new)
    base = tmp_path / "base.vhd"
    child = tmp_path / "child.vhd"
    result_of(sj("disk", "convert", "-O", "vhd", base_raw, base))
    result_of(sj("disk", "convert", "-O", "vhd", "-B", base, new_raw, child))
    _assert_chain_reads([child, base], bytes(new))
    with VhdDevice(str(child)) as layer:
        stored = sum(e.length for e in layer.extents() if e.state.name == "DATA")
    changed = np.frombuffer(new, np.uint8).reshape(-1, 512) != np.frombuffer(
        base_raw.read_bytes(), np.uint8
    ).reshape(-1, 512)
    # Only the changed sectors, plus (libvhdi's bitmap bug) the sectors after the first
    # changed one within the same 8-sector bitmap byte.
    per_sector = changed.any(axis=1)
    per_sector = np.concatenate((per_sector, np.zeros(-per_sector.size % 8, bool)))
    groups = per_sector.reshape(-1, 8)
    widened = np.logical_or.accumulate(groups, axis=1)
    assert stored == int(widened.sum()) * 512
    assert int(changed.any(axis=1).sum()) * 512 <= stored < 8 * int(changed.any(axis=1).sum()) * 512
    # qemu reads a type-4 VHD as a parentless dynamic disk: only the changed sectors show.
    assert qemu_compare(new_raw, child, "vpc") == 1


def test_missing_parent_is_not_found(chain: tuple[list[Path], bytearray]) -> None:
    paths, _ = chain
    os.unlink(paths[1])
    with pytest.raises(NotFound, match="VHD parent"):
        registry.open_image(str(paths[0]))
    proc = strata("disk", "info", paths[0])
    assert proc.returncode == 4 and "c2.vhd" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [["disk", "info"], ["--json", "disk", "info"], ["disk", "map"], ["--json", "disk", "map"]],
)
def test_a_child_that_is_its_own_parent_is_corrupt(tmp_path: Path, args: list[str]) -> None:
    """A child renamed over its parent names itself as parent: a corrupt image (exit 5)
    naming the file, not an internal error."""
    parent = tmp_path / "p.vhd"
    qemu_img("create", "-f", "vpc", parent, "64M")
    child = tmp_path / "c.vhd"
    assert strata("disk", "create", "-O", "vhd", "-b", parent, child).returncode == 0
    child.rename(parent)
    proc = strata(*args, parent)
    assert proc.returncode == CorruptImage.exit_code, (proc.returncode, proc.stderr)
    if "--json" in args:
        (event,) = [json.loads(line) for line in proc.stdout.splitlines()]
        assert event["event"] == "error" and event["kind"] == "CorruptImage", event
        message = event["message"]
    else:
        (line,) = proc.stderr.splitlines()
        message = line.removeprefix("strata: ")
    assert message.startswith(f"{parent}: corrupt parent chain: ")
    assert f"loops back to {os.path.realpath(parent)}" in message


def test_parent_with_another_uuid_is_refused(chain: tuple[list[Path], bytearray]) -> None:
    paths, _ = chain
    impostor = paths[1].with_suffix(".other")
    ops.create(str(impostor), "vhd", SIZE)
    shutil.move(impostor, paths[1])
    with pytest.raises(IntegrityError, match="UUID"):
        registry.open_image(str(paths[0]))
    assert strata("disk", "info", paths[0]).returncode == 7
    check = strata("disk", "check", paths[0])
    assert check.returncode == 1 and "parent_unique_id" in check.stdout


def test_parent_of_another_format_is_refused(chain: tuple[list[Path], bytearray]) -> None:
    """A VHD child's parent path now holding a VMDK (made by qemu-img) is refused by name."""
    paths, _ = chain
    paths[1].unlink()
    made = subprocess.run(
        [require("qemu-img"), "create", "-q", "-f", "vmdk", str(paths[1]), str(SIZE)]
    )
    assert made.returncode == 0
    with pytest.raises(InvalidInput, match=r"is a vmdk image; this VHD parent .* must be vhd"):
        registry.open_image(str(paths[0]))
    proc = strata("disk", "info", paths[0])
    assert proc.returncode == 3 and "vmdk" in proc.stderr


def test_parent_outside_allowed_dirs_is_refused(tmp_path: Path) -> None:
    outside, inside = tmp_path / "outside", tmp_path / "inside"
    outside.mkdir()
    inside.mkdir()
    base = outside / "base.vhd"
    assert strata("disk", "create", "-O", "vhd", base, "8M").returncode == 0
    child = inside / "child.vhd"
    assert strata("disk", "create", "-O", "vhd", "--parent", base, child).returncode == 0
    with pytest.raises(PathOutsideAllowed):
        registry.open_image(str(child))
    assert strata("disk", "info", child).returncode == 3
    with registry.open_image(str(child), allowed_dirs=[str(inside), str(outside)]) as disk:
        assert disk.parent is not None


def test_relative_locator_is_preferred(tmp_path: Path) -> None:
    """A moved chain still opens: the W2ru relative path wins over the stale absolute one."""
    first = tmp_path / "a"
    first.mkdir()
    assert strata("disk", "create", "-O", "vhd", first / "base.vhd", "8M").returncode == 0
    assert (
        strata("disk", "create", "-O", "vhd", "-b", first / "base.vhd", first / "c.vhd").returncode
        == 0
    )
    moved = tmp_path / "b"
    shutil.move(first, moved)
    with registry.open_image(str(moved / "c.vhd")) as disk:
        assert disk.layers[1].path == str(moved / "base.vhd")


def test_fixed_parent_and_foreign_backing(tmp_path: Path) -> None:
    raw = write_sparse_raw(tmp_path / "src.raw", 8 * MiB, [(MiB - 512, 5000)])
    base = tmp_path / "fixed.vhd"
    result_of(sj("disk", "convert", "-O", "vhd", "-o", "subformat=fixed", raw, base))
    child = tmp_path / "child.vhd"
    assert strata("disk", "create", "-O", "vhd", "-b", base, child).returncode == 0
    expected = bytearray(raw.read_bytes())
    with registry.open_image(str(child), writable=True) as disk:
        disk.write(MiB + 100, b"\x07" * 9000)
    expected[MiB + 100 : MiB + 9100] = b"\x07" * 9000
    _assert_chain_reads([child, base], bytes(expected))
    refused = strata("disk", "convert", "-O", "vhd", "-B", raw, raw, tmp_path / "x.vhd")
    assert refused.returncode == 3 and "VHD parent" in refused.stderr
    assert not (tmp_path / "x.vhd").exists()
    wrong = strata("disk", "create", "-O", "vhd", "-b", base, tmp_path / "y.vhd", "16M")
    assert wrong.returncode == 3 and "parent's size" in wrong.stderr


def test_candidates_relative_then_absolute_then_windows_names() -> None:
    name = "C:\\vms\\gold\\base.vhd".encode("utf-16-be")
    header = Container(parent_name=name + bytes(512 - len(name)))
    locators = [
        Locator(0, b"W2ku", 0, 0, 0, "C:\\vms\\gold\\base.vhd"),
        Locator(1, b"W2ku", 0, 0, 0, "/srv/gold/base.vhd"),
        Locator(2, b"W2ru", 0, 0, 0, ".\\..\\gold\\base.vhd"),
    ]
    lay = Layout("/srv/child/c.vhd", 0, header=header, locators=locators)
    assert parent_candidates(lay) == ["../gold/base.vhd", "/srv/gold/base.vhd", "base.vhd"]
