"""Issue 7 acceptance: OS disk → import → packaging disk (VHD, VHDX, VMDK) → writes →
finalize → publish → export to every target, each output checked by qemu-img."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from support.layers import (
    apply_to_raw,
    apply_with_strata,
    compare_with_qemu,
    expected_copy,
    make_os_disk,
    qemu_format,
    qemu_io_write,
)
from support.tools import qemu_info, require, result_of, run, strata, strata_json

MiB = 1 << 20
FORMATS = ["vhd", "vhdx", "vmdk"]
TARGET_FORMATS = {
    "pvs": "vhdx",
    "xenserver": "vhd",
    "vsphere": "vmdk",
    "hyperv": "vhdx",
    "azure": "vhd",
    "raw": "raw",
}
OS_SIZE_MIB = 256


@dataclass(frozen=True)
class World:
    root: Path
    store: Path
    os_raw: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("e2e")
    os_raw = make_os_disk(root / "os.raw", OS_SIZE_MIB)
    store = root / "store"
    result = result_of(
        strata_json("os", "import", "win11", os_raw, "--version", "1", "--store", store)
    )
    assert result["layer"] == "win11" and result["size"] == OS_SIZE_MIB * MiB
    return World(root, store, os_raw)


def _writes(seed: int) -> list[tuple[int, bytes]]:
    rng = np.random.default_rng(seed)
    blob = rng.integers(0, 256, 3 * MiB, dtype=np.uint8).tobytes()
    return [
        (MiB + 4096, blob[: 64 << 10]),  # inside the FAT partition
        (80 * MiB + 512, blob[MiB : 2 * MiB + 1536]),  # ext4 area, unaligned
        (70 * MiB, bytes(256 << 10)),  # zeros over file-system data
        (OS_SIZE_MIB * MiB - 512, b"\xee" * 512),  # the last sector
        (4 * MiB - 4096, blob[2 * MiB : 2 * MiB + 8192]),  # across a 4 MiB boundary
    ]


def _package(world: World, layer: str, fmt: str, out: Path, *extra: str) -> dict:
    out.mkdir(exist_ok=True)
    return result_of(
        strata_json(
            "packaging-disk",
            "create",
            "--layer",
            layer,
            "--os",
            "win11",
            "--format",
            fmt,
            "--name",
            f"{layer}-pkg",
            "--out",
            out,
            "--store",
            world.store,
            *extra,
        )
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_package_finalize_publish_export(world: World, fmt: str) -> None:
    out = world.root / f"out-{fmt}"
    created = _package(world, f"app-{fmt}", fmt, out)
    disk = Path(created["disk_path"])
    assert created["state"] == "packaging" and disk.exists()
    expected = expected_copy(world.os_raw, world.root / f"expected-{fmt}.raw")
    writes = _writes(seed=len(fmt))
    apply_with_strata(disk, writes)
    apply_to_raw(expected, writes)
    if fmt == "vmdk":  # the packaging machine may also be qemu
        qemu_io_write(disk, "vmdk", 120 * MiB, 64 << 10, 0x5A)
        apply_to_raw(expected, [(120 * MiB, b"\x5a" * (64 << 10))])
        assert compare_with_qemu(expected, disk, "vmdk") == 0
    assert strata("disk", "compare", disk, expected).returncode == 0

    done = result_of(
        strata_json(
            "finalize",
            "--disk",
            disk,
            "--layer",
            f"app-{fmt}",
            "--version",
            "1",
            "--comment",
            f"installed on {fmt}",
            "--store",
            world.store,
        )
    )
    assert done["state"] == "deployable" and done["changed_blocks"] > 0
    published = result_of(
        strata_json(
            "image",
            "publish",
            "--name",
            f"img-{fmt}",
            "--os",
            "win11",
            "--app",
            f"app-{fmt}",
            "--store",
            world.store,
        )
    )
    assert len(published["manifest"]) == 32

    for target, tfmt in TARGET_FORMATS.items():
        dest = out / f"export-{target}.{tfmt}"
        exported = result_of(
            strata_json(
                "image", "export", f"img-{fmt}", dest, "--target", target, "--store", world.store
            )
        )
        assert exported["format"] == tfmt
        assert compare_with_qemu(expected, dest, tfmt) == 0, (target, tfmt)
        info = qemu_info(dest, qemu_format(tfmt))
        assert info["format"] == qemu_format(tfmt)
        assert info["virtual-size"] == OS_SIZE_MIB * MiB
        if target == "azure":
            assert info["virtual-size"] % MiB == 0
            assert os.path.getsize(dest) == info["virtual-size"] + 512
        if target == "vsphere":
            assert info["format-specific"]["data"]["create-type"] == "streamOptimized"

    history = result_of(strata_json("layer", "history", f"app-{fmt}", "--store", world.store))
    assert any(row.get("comment") == f"installed on {fmt}" for row in history["history"])


def test_job_iso_reads_in_xorriso_and_isoinfo(world: World) -> None:
    created = _package(world, "app-iso", "vhd", world.root / "out-iso")
    iso = created["iso"]
    listing = run([require("xorriso"), "-indev", iso, "-ls"]).stdout
    assert "job.json" in listing
    text = run([require("isoinfo"), "-J", "-x", "/job.json", "-i", iso]).stdout
    job = json.loads(text)
    assert job["layer"] == "app-iso" and job["version"] == created["version"]
    assert job["stack"] == [["win11", "1"]] and job["format"] == "vhd"


def test_second_version_starts_from_the_first(world: World) -> None:
    out = world.root / "out-v2"
    first = _package(world, "app-v", "vhdx", out)
    expected = expected_copy(world.os_raw, world.root / "expected-v.raw")
    w1 = [(10 * MiB, b"\x01" * MiB), (90 * MiB, b"\x02" * 4096)]
    apply_with_strata(Path(first["disk_path"]), w1)
    apply_to_raw(expected, w1)
    assert (
        strata(
            "finalize",
            "--disk",
            first["disk_path"],
            "--layer",
            "app-v",
            "--version",
            "1",
            "--store",
            world.store,
        ).returncode
        == 0
    )
    second = _package(world, "app-v", "vhdx", world.root / "out-v2b", "--new-version", "2")
    assert second["stack"] == [["win11", "1"], ["app-v", "1"]]
    assert strata("disk", "compare", second["disk_path"], expected).returncode == 0
    w2 = [(10 * MiB, bytes(4096)), (200 * MiB, b"\x03" * 65536)]
    apply_with_strata(Path(second["disk_path"]), w2)
    apply_to_raw(expected, w2)
    assert (
        strata(
            "finalize",
            "--disk",
            second["disk_path"],
            "--layer",
            "app-v",
            "--version",
            "2",
            "--remove-disk",
            "--store",
            world.store,
        ).returncode
        == 0
    )
    assert not Path(second["disk_path"]).exists()
    assert (
        strata(
            "image",
            "publish",
            "--name",
            "img-v2",
            "--os",
            "win11",
            "--app",
            "app-v:2",
            "--store",
            world.store,
        ).returncode
        == 0
    )
    dest = out / "v2.vhd"
    assert (
        strata(
            "image", "export", "img-v2", dest, "--target", "xenserver", "--store", world.store
        ).returncode
        == 0
    )
    assert compare_with_qemu(expected, dest, "vhd") == 0


def test_disk_partitions_matches_sfdisk(world: World) -> None:
    ours = result_of(strata_json("disk", "partitions", world.os_raw))
    theirs = json.loads(run([require("sfdisk"), "--json", world.os_raw]).stdout)["partitiontable"]
    assert ours["scheme"] == theirs["label"] == "gpt"
    assert [(p["start_sector"], p["sectors"]) for p in ours["partitions"]] == [
        (p["start"], p["size"]) for p in theirs["partitions"]
    ]
