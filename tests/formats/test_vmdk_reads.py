"""Random reads through strata's VMDK reader against the flat source, for every subformat."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strata.formats import registry
from strata.ops import disk as ops

from support.images import GiB, MiB, write_sparse_raw
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
