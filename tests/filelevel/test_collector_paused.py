"""The file delta is captured with Python's cyclic collector paused (its passes over the
delta's many small objects cost milliseconds for nothing to free), and the collector's state
is given back afterwards, whatever happened."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from strata.layer import filedelta as fd
from strata.store import Store


@pytest.fixture
def collector() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_paused_inside_enabled_after(collector: None) -> None:
    gc.enable()
    with fd.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), fd.collector_paused():
        raise KeyError("a capture that fails")
    assert gc.isenabled()


def test_left_off_when_it_was_off(collector: None) -> None:
    gc.disable()
    with fd.collector_paused():
        pass
    assert not gc.isenabled()


def test_capture_volume_runs_paused(
    collector: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[bool] = []

    def rows(*args: object) -> list[fd._Row]:
        seen.append(gc.isenabled())
        return []

    monkeypatch.setattr(fd, "ntfs_rows", rows)
    gc.enable()
    vol = SimpleNamespace(dev=SimpleNamespace(size=1 << 20, sector_size=512))
    with Store.init(tmp_path / "store") as store:
        delta = fd.capture_volume(store, vol, vol, np.zeros(0, np.uint64))  # type: ignore[arg-type]
    assert seen == [False] and gc.isenabled()
    assert len(delta.entries) == 0
