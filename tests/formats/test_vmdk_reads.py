"""Random reads through strata's VMDK reader against the flat source, for every subformat."""

from __future__ import annotations

import json
import resource
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strata.formats import registry
from strata.ops import disk as ops

from support.images import GiB, MiB, write_sparse_raw
from support.tools import qemu_img, result_of, strata
from support.vmdk_helpers import SUBFORMATS

SIZE = 2 * GiB + 3 * MiB  # two extents for the split subformats
RUNS = [(0, 300_000), (5 * MiB + 4096, 2 * MiB), (2 * GiB - MiB, 2 * MiB + 512)]
WINDOWS = [(0, 8 * MiB), (2 * GiB - 2 * MiB, 5 * MiB)]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vmdk-reads")
    raw = write_sparse_raw(root / "src.raw", SIZE, RUNS, seed=9)
    out = {"raw": raw}
    for sub in SUBFORMATS:
        out[sub] = root / f"{sub}.vmdk"
        ops.convert(ops.OpenSpec(str(raw)), str(out[sub]), "vmdk", [f"subformat={sub}"])
    return out


@pytest.mark.parametrize("subformat", SUBFORMATS)
@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_reads(images: dict[str, Path], subformat: str, data: st.DataObject) -> None:
    base, span = data.draw(st.sampled_from(WINDOWS))
    offset = base + data.draw(st.integers(0, span - 1))
    length = data.draw(st.integers(1, min(300_000, base + span - offset)))
    with open(images["raw"], "rb") as f:
        f.seek(offset)
        expected = f.read(length)
    with registry.open_layer(str(images[subformat])) as layer:
        assert layer.read(offset, length) == expected
        covered = sum(e.length for e in layer.extents(offset, length))
    assert covered == length


def _open_files(soft: int, hard: int | None = None) -> Callable[[], None]:
    """For preexec_fn: the child's limit on open files."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1] if hard is None else hard
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, limit))


@pytest.fixture(scope="module")
def split_1t(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 TiB twoGbMaxExtentSparse disk by qemu-img: a descriptor and 512 extent files."""
    image = tmp_path_factory.mktemp("split") / "big.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", image, "1T")
    return image


def test_many_extents_open_past_a_low_soft_limit(split_1t: Path) -> None:
    """512 extent files with a soft limit of 128 open files (qemu-img fails there: "Too many
    open files"): strata raises its soft limit toward the hard one and reads the disk."""
    theirs = json.loads(qemu_img("info", "--output=json", split_1t).stdout)
    proc = strata("disk", "info", "--json", split_1t, preexec_fn=_open_files(128))
    assert proc.returncode == 0, proc.stderr
    ours = result_of([json.loads(line) for line in proc.stdout.splitlines()])
    assert ours["virtual-size"] == theirs["virtual-size"] == 1 << 40
    assert len(ours["extents"]) == 512
    text = strata("disk", "info", split_1t, preexec_fn=_open_files(128))
    listed = [line for line in text.stdout.splitlines() if line.startswith("    RW ")]
    assert listed == [f'    RW 4194304 SPARSE "big-s{i:03d}.vmdk"' for i in range(1, 513)]


def test_many_extents_past_the_hard_limit_are_refused_before_opening(split_1t: Path) -> None:
    proc = strata("disk", "info", split_1t, preexec_fn=_open_files(128, 128))
    assert proc.returncode == 11, proc.stderr
    assert proc.stderr == (
        f"strata: {split_1t}: its 512 extent files need more open files than the limit "
        "allows (128, ulimit -Hn)\n"
    )
