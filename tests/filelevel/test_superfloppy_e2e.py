"""A FAT OS disk without a partition table (a "superfloppy", as ``mkfs.fat`` makes on a bare
image) is a FAT volume for finalize and publish as it is for ``fs ls``: two app layers that
each add a file, installed by mtools, merge at file level; the exported image is checked by
fsck.fat, mdir and mtype."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from strata.units import human_size

from support.filelevel_tools import (
    ENV,
    MiB,
    export_raw,
    fsck_fat,
    install_whole_disk_file,
    mtool,
    whole_disk_fat_os,
)
from support.tools import require, result_of, strata, strata_json

FILES = {"a": ("/a.txt", b"installed by app a\r\n"), "b": ("/b.txt", b"installed by app b\r\n")}
CONFLICTING = {"c": ("/a.txt", b"app c writes a.txt too\r\n")}  # against a


@dataclass(frozen=True)
class World:
    root: Path
    store: Path
    finalized: dict[str, dict]


def _install(root: Path, store: Path, layer: str) -> dict:
    path, data = {**FILES, **CONFLICTING}[layer]
    return install_whole_disk_file(store, root, layer, path, data)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("superfloppy")
    store = root / "store"
    whole_disk_fat_os(root, store)
    done = {layer: _install(root, store, layer) for layer in [*FILES, *CONFLICTING]}
    return World(root, store, done)


def test_finalize_captures_the_whole_disk_volume(world: World) -> None:
    for layer in FILES:
        assert world.finalized[layer]["file_delta"]["volumes"] == [0], world.finalized[layer]
    shown = result_of(strata_json("layer", "diff", "a:1", "--store", world.store))
    (volume,) = shown["volumes"]
    assert [(e["path"], e["change"]) for e in volume["entries"]] == [("/a.txt", "added")]
    text = strata("layer", "diff", "a:1", "--store", world.store)
    assert text.returncode == 0 and "whole disk: 1 entries" in text.stdout, text.stdout


def test_independent_layers_publish_merged_on_a_superfloppy(world: World) -> None:
    cmd = ["image", "publish", "--name", "merged", "--os", "win", "--app", "a", "--app", "b"]
    result = result_of(strata_json(*cmd, "--store", world.store))
    assert result["merge"] == "file" and result["fat_volumes"] == [0]
    raw = export_raw(world.store, "merged", world.root / "merged.raw")
    assert raw.stat().st_size == 64 * MiB
    checked = fsck_fat(raw)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = mtool("mdir", "-b", "-i", raw, "::/").split()
    assert sorted(listed) == ["::/a.txt", "::/b.txt"], listed
    for path, data in FILES.values():
        typed = subprocess.run(
            [require("mtype"), "-i", raw, f"::{path}"], capture_output=True, env=ENV
        )
        assert typed.returncode == 0 and typed.stdout == data, typed


def test_conflict_report_names_the_whole_disk(world: World) -> None:
    """Both layers add /a.txt: the text report says where, as ``fs ls`` does ("whole disk"),
    and the later layer's bytes are the ones exported."""
    cmd = ["image", "publish", "--name", "clash", "--os", "win", "--app", "a", "--app", "c"]
    text = strata(*cmd, "--store", world.store)
    assert text.returncode == 0, text.stderr
    lines = [line for line in text.stdout.splitlines() if line.startswith("conflict:")]
    assert lines == ["conflict: /a.txt (whole disk): a:1@100, c:1@200 -> c:1 wins"], text.stdout
    raw = export_raw(world.store, "clash", world.root / "clash.raw")
    typed = subprocess.run([require("mtype"), "-i", raw, "::/a.txt"], capture_output=True, env=ENV)
    assert typed.returncode == 0 and typed.stdout == CONFLICTING["c"][1], typed


def test_image_list_text_matches_its_json(world: World) -> None:
    cmd = ["image", "publish", "--name", "listed", "--os", "win", "--app", "b", "--app", "a:1"]
    assert strata(*cmd, "--target", "hyperv", "--store", world.store).returncode == 0
    rows = {
        r["name"]: r
        for r in result_of(strata_json("image", "list", "--store", world.store))["images"]
    }
    header, *lines = strata("image", "list", "--store", world.store).stdout.splitlines()
    assert header.split() == ["name", "data", "target", "created", "layers", "(os", "first)"]
    shown = {line.split()[0]: line for line in lines}
    assert set(shown) == set(rows)
    listed = shown["listed"].split(maxsplit=6)
    assert listed[1:3] == human_size(rows["listed"]["logical_size"]).split()
    assert listed[3] == "hyperv" and listed[6] == "win, b, a:1"
