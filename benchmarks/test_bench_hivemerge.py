"""The registry merge on a large hive beside hivexml walking it once (libhivex's C walk).

A SOFTWARE-like hive of 50 000 keys (34 MB) and a copy an installer changed in place (a few
keys and values): strata finds that layer's changes (from the pages that differ, then the keys
there) and makes them on a third copy.  hivexml dumps the whole hive: what any walk of it
costs in C.  The whole-tree walk (strata's reference) is timed once, for the record.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from strata.integrity.hive import REG_DWORD, REG_SZ, Hive, Value
from strata.layer import hivemerge

from conftest import scaled
from support.integrity_tools import build_hive
from support.tools import require


def _software(path: Path, vendors: int, products: int) -> Path:
    build_hive(path, {"Software": {}})
    with Hive(str(path), "base", write=True) as h:
        sw = h.key("Software")
        assert sw is not None
        for v in range(vendors):
            vendor = h.add_key(sw, f"Vendor{v:04d}")
            for k in range(products):
                where = f"C:\\Program Files\\V{v}\\P{k}\0".encode("utf-16-le")
                h.set_values(
                    h.add_key(vendor, f"Product{k:03d}"),
                    [Value("InstallDir", REG_SZ, where), Value("Version", REG_DWORD, b"\1\0\0\0")],
                )
        h.commit()
    return path


def _installed(base: Path, out: Path, app: str) -> Path:
    shutil.copyfile(base, out)
    with Hive(str(out), app, write=True) as h:
        sw = h.key("Software")
        assert sw is not None
        node = h.add_key(h.add_key(sw, app), "Settings")
        h.set_values(node, [Value("Enabled", REG_DWORD, b"\1\0\0\0")])
        product = h.key("Software\\Vendor0003\\Product007")
        assert product is not None
        h.set_values(product, [Value("Version", REG_DWORD, b"\2\0\0\0")])
        h.commit()
    return out


def test_hive_merge(
    tmp_path: Path, versus: Callable[..., float], record_ratio: Callable[..., None]
) -> None:
    vendors = scaled(500, 50)
    base = _software(tmp_path / "SOFTWARE.os", vendors, 100)
    mine = _installed(base, tmp_path / "SOFTWARE.b", "AppB")
    theirs = _installed(base, tmp_path / "SOFTWARE.a", "AppA")
    merged = tmp_path / "SOFTWARE.merged"
    hivexml = require("hivexml")

    def ours() -> None:
        shutil.copyfile(theirs, merged)
        with Hive(str(base), "os") as b, Hive(str(mine), "b") as m:
            change = hivemerge.changes(b, m)
        with Hive(str(merged), "merged", write=True) as h:
            list(hivemerge.apply(h, change))
            h.commit()
        # AppB and its Settings; Enabled and Version set, InstallDir gone from Product007
        assert change.counts == {
            "keys_added": 2, "keys_deleted": 0, "values_set": 2, "values_deleted": 1,
        }  # fmt: skip

    def peer() -> None:
        subprocess.run([hivexml, base], check=True, stdout=subprocess.DEVNULL)

    versus(ours, peer, peer="hivexml (one walk of the hive, C)")
    with Hive(str(merged), "merged") as h:
        assert h.key("Software\\AppA\\Settings") is not None
        assert h.key("Software\\AppB\\Settings") is not None
    start = time.perf_counter()
    with Hive(str(base), "os") as b, Hive(str(mine), "b") as m:
        whole = hivemerge.walked(b, m)
        walk_s = time.perf_counter() - start
        assert whole.counts == hivemerge.changes(b, m).counts  # the reference agrees
    record_ratio(
        metric="hive merge: the whole-tree walk (reference), for the record",
        keys=vendors * 101 + 1,
        hive_bytes=base.stat().st_size,
        walk_s=round(walk_s, 3),
    )
