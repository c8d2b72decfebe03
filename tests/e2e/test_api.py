"""A controller drives the whole flow through strata.api, in process; qemu-img checks it."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata import api
from strata.errors import StateError

from support.images import MiB, write_sparse_raw
from support.layers import apply_to_raw, apply_with_strata, compare_with_qemu, expected_copy


def test_flow_through_the_python_api(tmp_path: Path) -> None:
    store = tmp_path / "store"
    os_raw = write_sparse_raw(tmp_path / "os.raw", 32 * MiB, [(0, MiB), (20 * MiB, MiB)], seed=8)
    imported = api.import_os("base", "1", str(os_raw), store=store)
    assert imported["layer"] == "base" and imported["size"] == 32 * MiB

    out = tmp_path / "out"
    out.mkdir()
    request = api.PackagingRequest(layer="tool", os="base", fmt="vmdk", name="tool", out=str(out))
    pkg = api.create_packaging_disk(request, store=store)
    writes = [(3 * MiB, b"\x42" * 8192), (20 * MiB + 512, bytes(1024))]
    apply_with_strata(Path(pkg["disk_path"]), writes)
    expected = expected_copy(os_raw, tmp_path / "expected.raw")
    apply_to_raw(expected, writes)

    done = api.finalize(pkg["disk_path"], "tool", pkg["version"], store=store, comment="api")
    assert done["state"] == "deployable"
    with pytest.raises(StateError):
        api.finalize(pkg["disk_path"], "tool", pkg["version"], store=store)

    api.publish(api.Template(name="img", os="base", apps=(api.AppRef("tool"),)), store=store)
    dest = tmp_path / "img.vhdx"
    result = api.export("img", str(dest), target_name="hyperv", store=store)
    assert result["format"] == "vhdx"
    assert compare_with_qemu(expected, dest, "vhdx") == 0
    assert [row["operation"] for row in api.layer_history("tool", store)][-1] == "commit-version"
    assert api.verify_store(store)["clean"]
