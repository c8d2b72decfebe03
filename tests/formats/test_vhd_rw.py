"""Random writes into open VHDs (the packaging machine's role) against a flat reference,
checked by strata, qemu-img (fixed, dynamic) and libvhdi (differencing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strata.formats import registry
from strata.formats.vhd.check import check
from strata.ops import disk as ops

from support.images import MiB, random_bytes
from support.tools import qemu_compare, qemu_img, qemu_info, require, run
from support.vhd_tools import pyvhdi_chain

SIZE = 6 * MiB + 7 * 512
WRITES = st.lists(
    st.tuples(st.integers(0, SIZE - 1), st.integers(1, 300_000), st.integers(0, 1 << 30)),
    min_size=1,
    max_size=8,
)
CASES = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _apply(path: Path, expected: bytearray, writes: list[tuple[int, int, int]]) -> None:
    with registry.open_image(str(path), writable=True) as disk:
        for offset, length, seed in writes:
            length = min(length, SIZE - offset)
            data = random_bytes(length, seed) if seed % 5 else bytes(length)
            disk.write(offset, data)
            expected[offset : offset + length] = data


@pytest.mark.parametrize("subformat", ["fixed", "dynamic"])
@CASES
@given(writes=WRITES)
def test_random_writes_read_back_in_qemu(
    tmp_path_factory: pytest.TempPathFactory, subformat: str, writes: list
) -> None:
    root = tmp_path_factory.mktemp("rw")
    image, flat = root / "d.vhd", root / "flat.raw"
    ops.create(str(image), "vhd", SIZE, [f"subformat={subformat}"])
    expected = bytearray(SIZE)
    _apply(image, expected, writes)
    flat.write_bytes(expected)
    with registry.open_image(str(image)) as disk:
        assert disk.read(0, SIZE) == expected
    assert qemu_compare(flat, image, "vpc") == 0
    assert pyvhdi_chain([image])[0].read_buffer_at_offset(SIZE, 0) == expected
    assert check(str(image)) == []


@CASES
@given(base_writes=WRITES, child_writes=WRITES)
def test_random_writes_into_a_child_read_back_in_libvhdi(
    tmp_path_factory: pytest.TempPathFactory, base_writes: list, child_writes: list
) -> None:
    root = tmp_path_factory.mktemp("rwc")
    base, child = root / "base.vhd", root / "child.vhd"
    ops.create(str(base), "vhd", SIZE)
    expected = bytearray(SIZE)
    _apply(base, expected, base_writes)
    ops.create(str(child), "vhd", None, parent=ops.OpenSpec(str(base)))
    _apply(child, expected, child_writes)
    top = pyvhdi_chain([child, base])[0]
    assert top.read_buffer_at_offset(SIZE, 0) == expected
    with registry.open_image(str(child)) as disk:
        assert disk.read(0, SIZE) == expected


@pytest.fixture(scope="module")
def qemu_dynamic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A qemu-written dynamic VHD, a strata child on top, and the flat chain content."""
    root = tmp_path_factory.mktemp("ranges")
    base, child = root / "q.vhd", root / "c.vhd"
    qemu_img("create", "-q", "-f", "vpc", base, "20M")
    cmds = ["-c", "write -P 0x41 1M 3M", "-c", "write -P 0x42 9M 512", "-c", "write -P 0x43 15M 2M"]
    run([require("qemu-io"), "-f", "vpc", *cmds, base])
    ops.create(str(child), "vhd", None, parent=ops.OpenSpec(str(base)))
    size = qemu_info(base, "vpc")["virtual-size"]
    expected = bytearray(size)
    expected[1 * MiB : 4 * MiB] = b"\x41" * (3 * MiB)
    expected[9 * MiB : 9 * MiB + 512] = b"\x42" * 512
    expected[15 * MiB : 17 * MiB] = b"\x43" * (2 * MiB)
    _apply_sized(child, expected, [(2 * MiB - 77, 5000, 9), (16 * MiB + 3, 1 << 20, 8)])
    return child, bytes(expected)


def _apply_sized(path: Path, expected: bytearray, writes: list[tuple[int, int, int]]) -> None:
    with registry.open_image(str(path), writable=True) as disk:
        for offset, length, seed in writes:
            data = random_bytes(length, seed)
            disk.write(offset, data)
            expected[offset : offset + length] = data


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_ranges_read_like_the_flat_reference(
    qemu_dynamic: tuple[Path, bytes], data: st.DataObject
) -> None:
    child, expected = qemu_dynamic
    offset = data.draw(st.integers(0, len(expected) - 1))
    length = data.draw(st.integers(0, min(3 * MiB, len(expected) - offset)))
    with registry.open_image(str(child)) as disk:
        assert disk.read(offset, length) == expected[offset : offset + length]
        covered = sum(e.length for e in disk.extents(offset, length))
        assert covered == length
