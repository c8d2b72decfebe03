"""A packaging machine's hostile FAT names and a tampered store, through finalize and a
file-level publish on a whole-disk FAT OS layer: a long name holding ``/`` is captured under
the entry's short name (it used to be captured as a change to the OS file its text names,
which publish then overwrote); a stored file delta with a ``..`` path or naming an absent
chunk, or a stack that is not [layer, version] pairs, is refused (exit 5 / 7) before
publish writes anything.  mtools and fsck.fat read the exported image."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from strata.store import Manifest

from support.fat_tools import rewrite_long_name
from support.filelevel_tools import (
    ENV,
    export_raw,
    fsck_fat,
    install_whole_disk_file,
    mtool,
    tamper_manifest,
    whole_disk_fat_os,
)
from support.tools import require, result_of, strata, strata_json

KEEP = b"the OS layer's file\r\n"


@dataclass(frozen=True)
class World:
    root: Path
    store: Path


def _install(world: World, layer: str, name: str, data: bytes, long_name: str = "") -> None:
    def rename(raw: Path) -> None:
        image = bytearray(raw.read_bytes())
        rewrite_long_name(image, "/", name, long_name)
        raw.write_bytes(image)

    edit = rename if long_name else None
    install_whole_disk_file(world.store, world.root, layer, f"/{name}", data, edit)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("hostile-delta")
    (root / "keep.txt").write_bytes(KEEP)

    def populate(os_raw: Path) -> None:
        mtool("mmd", "-i", os_raw, "::/Dir")
        mtool("mcopy", "-i", os_raw, root / "keep.txt", "::/Dir/keep.txt")

    store = root / "store"
    whole_disk_fat_os(root, store, populate)
    w = World(root, store)
    _install(w, "a", "Zir_keep.txt", b"from app a\r\n", long_name="Dir/keep.txt")
    for layer in ("b", "c", "d", "e"):
        _install(w, layer, f"{layer}.txt", f"from app {layer}\r\n".encode())
    return w


def _typed(raw: Path, path: str) -> bytes:
    got = subprocess.run([require("mtype"), "-i", raw, f"::{path}"], capture_output=True, env=ENV)
    assert got.returncode == 0, got.stderr
    return got.stdout


def test_a_long_name_holding_a_slash_is_captured_under_its_short_name(world: World) -> None:
    shown = result_of(strata_json("layer", "diff", "a:1", "--store", world.store))
    (volume,) = shown["volumes"]
    assert [(e["path"], e["change"]) for e in volume["entries"]] == [("/ZIR_KEEP.TXT", "added")]
    cmd = ["image", "publish", "--name", "ab", "--os", "win", "--app", "a", "--app", "b"]
    assert result_of(strata_json(*cmd, "--store", world.store))["merge"] == "file"
    raw = export_raw(world.store, "ab", world.root / "ab.raw")
    checked = fsck_fat(raw)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert _typed(raw, "/Dir/keep.txt") == KEEP
    assert _typed(raw, "/ZIR_KEEP.TXT") == b"from app a\r\n"


def _tamper(world: World, ref: str, change: Callable[[Manifest], None]) -> None:
    tamper_manifest(world.store, ref, change)


def _packs(world: World) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (world.store / "packs").rglob("*") if p.is_file()}


def _refused_publish(world: World, app: str, code: int) -> str:
    before = _packs(world)
    cmd = ["image", "publish", "--name", f"with-{app}", "--os", "win", "--app", "b"]
    got = strata(*cmd, "--app", app, "--store", world.store, check=False)
    assert got.returncode == code, got.stdout + got.stderr
    assert "Traceback" not in got.stderr
    listed = strata("image", "list", "--store", world.store).stdout
    assert f"with-{app}" not in listed
    assert _packs(world) == before  # not a chunk written
    return got.stderr


def test_a_stored_path_with_dotdot_is_refused_before_publish_writes(world: World) -> None:
    def climb(m: Manifest) -> None:
        schema, names = m.tables["file-names"]
        assert names.tobytes() == b"/c.txt"
        m.tables["file-names"] = (schema, np.frombuffer(b"/../cc", names.dtype).copy())

    _tamper(world, "c:1", climb)
    shown = strata("layer", "diff", "c:1", "--store", world.store, check=False)
    assert shown.returncode == 5 and "layer c:1" in shown.stderr and "'..'" in shown.stderr
    err = _refused_publish(world, "c", 5)
    assert "layer c:1: corrupt file delta" in err and "file-names" in err


def test_a_stored_delta_naming_an_absent_chunk_is_refused(world: World) -> None:
    def lose(m: Manifest) -> None:
        _, chunks = m.tables["file-chunks"]
        chunks["id"][0] = np.frombuffer(b"\x5a" * 16, "V16")[0]

    _tamper(world, "d:1", lose)
    err = _refused_publish(world, "d", 7)
    assert "layer d:1" in err and "/d.txt" in err and "file-chunks.id" in err


@pytest.mark.parametrize("stack", [[["win", 1]], "ab"])  # "ab": the block-level check's text
def test_a_stored_stack_that_is_not_layer_pairs_is_refused(world: World, stack: object) -> None:
    def garble(m: Manifest) -> None:
        m.meta["stack"] = stack

    _tamper(world, "e:1", garble)
    err = _refused_publish(world, "e", 5)
    assert "layer e:1: corrupt layer manifest" in err and "meta.stack" in err
