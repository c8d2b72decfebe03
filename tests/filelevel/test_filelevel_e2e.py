"""Issue 8 acceptance: app layers packaged independently on one OS layer (GPT + FAT32 + ext4),
installed by mtools, merged at file level by publish; the exported image is checked by
fsck.fat, mdir and mtype, the bytes outside the FAT volume byte for byte."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from strata.errors import StateError
from strata.ops import layers

from support.filelevel_tools import (
    FAT_LENGTH,
    FAT_START,
    MiB,
    back_to_child,
    export_raw,
    extract,
    fat_spec,
    finalize,
    fsck_fat,
    mtool,
    package,
    publish,
    read,
    to_raw,
    tree,
)
from support.layers import make_os_disk
from support.tools import result_of, strata, strata_json

OS_FILES = {
    "/Windows/keep.txt": b"kept by everyone\r\n",
    "/Windows/old/x.dll": b"x" * 5000,
    "/Windows/old/y.dll": b"y" * 7000,
}
OS_MIB = 128
OUTSIDE_A = (100 * MiB + 4096, b"A-outside" * 500)  # inside the ext4 partition
OUTSIDE_B = (110 * MiB, b"B-outside" * 700)


def _blob(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@dataclass(frozen=True)
class World:
    root: Path
    store: Path
    os_raw: Path
    files: dict[str, bytes]  # what each app installed (path -> content)


def _local(work: Path, name: str, data: bytes) -> Path:
    path = work / name
    path.write_bytes(data)
    return path


def _raw_write(raw: Path, offset: int, data: bytes) -> None:
    with open(raw, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _install_app(world_root: Path, store: Path, layer: str, steps: list, outside) -> dict:
    work = world_root / f"work-{layer}"
    work.mkdir()
    pkg = package(store, layer, world_root / f"out-{layer}")
    raw = to_raw(pkg, work / "pkg.raw")
    for tool, *args in steps:
        mtool(tool, "-i", fat_spec(raw), *[a(work) if callable(a) else a for a in args])
    _raw_write(raw, *outside)
    back_to_child(pkg, raw)
    done = finalize(store, pkg)
    assert done["state"] == "deployable"
    return done


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("filelevel")
    os_raw = make_os_disk(root / "os.raw", OS_MIB)
    seed = root / "seed"
    seed.mkdir()
    mtool("mmd", "-i", fat_spec(os_raw), "::/Windows", "::/Windows/old")
    for path, data in OS_FILES.items():
        mtool("mcopy", "-i", fat_spec(os_raw), _local(seed, Path(path).name, data), f"::{path}")
    store = root / "store"
    layers.import_os("win", "1", str(os_raw), store=store)
    files = {
        "/Apps/A/a.txt": b"app A\r\n",
        "/Apps/A/big.bin": _blob(1536 * 1024 + 77, 1),
        "/Apps/B/b.txt": b"app B\r\n",
        "/Windows/old/new.dll": _blob(9000, 2),
    }
    a_steps = [
        ("mmd", "::/Apps", "::/Apps/A"),
        ("mcopy", lambda w: _local(w, "a.txt", files["/Apps/A/a.txt"]), "::/Apps/A/a.txt"),
        ("mcopy", lambda w: _local(w, "big.bin", files["/Apps/A/big.bin"]), "::/Apps/A/big.bin"),
        ("mcopy", lambda w: _local(w, "shared", b"owner=A\r\n"), "::/Apps/shared.cfg"),
    ]
    b_steps = [
        ("mmd", "::/Apps", "::/Apps/B"),
        ("mcopy", lambda w: _local(w, "b.txt", files["/Apps/B/b.txt"]), "::/Apps/B/b.txt"),
        ("mcopy", lambda w: _local(w, "shared", b"owner=B, longer\r\n"), "::/Apps/shared.cfg"),
        ("mdel", "::/BOOT/BOOTX64.EFI"),
        ("mdeltree", "::/Windows/old"),
        ("mmd", "::/Windows/old"),
        ("mcopy", lambda w: _local(w, "new.dll", files["/Windows/old/new.dll"]), "::/Windows/old"),
    ]
    done_a = _install_app(root, store, "appA", a_steps, OUTSIDE_A)
    done_b = _install_app(root, store, "appB", b_steps, OUTSIDE_B)
    assert done_a["file_delta"]["volumes"] == [1] and done_b["file_delta"]["volumes"] == [1]
    return World(root, store, os_raw, files)


def _publish(world: World, name: str, *apps: str) -> dict:
    return publish(world.store, name, *apps)


def _publish_cli(world: World, name: str, *apps: str) -> dict:
    args = [a for app in apps for a in ("--app", app)]
    cmd = ["image", "publish", "--name", name, "--os", "win", *args, "--store", world.store]
    return result_of(strata_json(*cmd))


def _expected_tree(world: World) -> dict[str, bytes | None]:
    expected: dict[str, bytes | None] = {
        "/BOOT": None,
        "/Windows": None,
        "/Windows/old": None,
        "/Windows/keep.txt": OS_FILES["/Windows/keep.txt"],
        "/Apps": None,
        "/Apps/A": None,
        "/Apps/B": None,
    }
    expected.update(world.files)
    return expected


def _check_image(world: World, image: str, shared: bytes) -> Path:
    raw = export_raw(world.store, image, world.root / f"{image}.raw")
    volume = extract(raw, FAT_START, FAT_LENGTH, world.root / f"{image}-fat.img")
    checked = fsck_fat(volume)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    expected = {**_expected_tree(world), "/Apps/shared.cfg": shared}
    listed = tree(raw)
    assert set(listed) == {p.upper() for p in expected}, sorted(listed)
    for path, data in expected.items():
        if data is not None:
            assert read(raw, path) == data, path
    _check_outside(world, raw)
    return raw


def _check_outside(world: World, raw: Path) -> None:
    """Outside the FAT volume the image is the OS disk plus both apps' block changes."""
    reference = world.root / "expected-outside.raw"
    if not reference.exists():
        shutil.copyfile(world.os_raw, reference)
        for offset, data in (OUTSIDE_A, OUTSIDE_B):
            _raw_write(reference, offset, data)
    with open(reference, "rb") as want, open(raw, "rb") as got:
        for lo, hi in ((0, FAT_START), (FAT_START + FAT_LENGTH, OS_MIB * MiB)):
            for at in range(lo, hi, 8 * MiB):
                n = min(8 * MiB, hi - at)
                want.seek(at)
                got.seek(at)
                assert want.read(n) == got.read(n), f"bytes differ near {at}"


def test_independent_layers_merge_at_file_level(world: World) -> None:
    result = _publish_cli(world, "merged", "appA@100", "appB@200")
    assert result["merge"] == "file" and result["fat_volumes"] == [1]
    conflicts = {c["path"]: c for c in result["conflicts"]}
    assert set(conflicts) == {"/Apps/shared.cfg"}, result["conflicts"]
    shared = conflicts["/Apps/shared.cfg"]
    assert shared["layers"] == ["appA:1", "appB:1"] and shared["winner"] == "appB:1"
    assert shared["priorities"] == {"appA:1": 100, "appB:1": 200}
    _check_image(world, "merged", b"owner=B, longer\r\n")


def test_swapping_priorities_swaps_the_winner(world: World) -> None:
    result = _publish(world, "swapped", "appA@300", "appB@200")
    shared = next(c for c in result["conflicts"] if c["path"] == "/Apps/shared.cfg")
    assert shared["winner"] == "appA:1" and shared["layers"] == ["appB:1", "appA:1"]
    _check_image(world, "swapped", b"owner=A\r\n")


def test_conflict_report_is_kept_in_the_image_manifest(world: World) -> None:
    from strata.ops.image import find_image
    from strata.store import Store

    _publish(world, "kept", "appA", "appB")
    with Store(world.store) as st:
        _, manifest = find_image(st, "kept")
    assert manifest.meta["merge"] == "file"
    assert [c["winner"] for c in manifest.meta["conflicts"]] == ["appB:1"]


def test_whiteout_removes_an_os_file(world: World) -> None:
    _publish(world, "only-b", "appB")  # valid at block level: the fast path
    raw = export_raw(world.store, "only-b", world.root / "only-b.raw")
    assert "/BOOT/BOOTX64.EFI" not in tree(raw)
    merged = world.root / "merged.raw"
    if not merged.exists():
        _publish(world, "merged2", "appA@100", "appB@200")
        merged = export_raw(world.store, "merged2", merged)
    listed = tree(merged)
    assert "/BOOT" in listed and "/BOOT/BOOTX64.EFI" not in listed
    assert "/WINDOWS/OLD/X.DLL" not in listed and "/WINDOWS/OLD/NEW.DLL" in listed


def test_layer_diff_lists_the_file_delta(world: World) -> None:
    shown = result_of(strata_json("layer", "diff", "appB", "--store", world.store))
    (volume,) = shown["volumes"]
    entries = {e["path"]: e for e in volume["entries"]}
    assert entries["/BOOT/BOOTX64.EFI"]["change"] == "deleted"
    assert entries["/Apps/B/b.txt"] == {
        "path": "/Apps/B/b.txt",
        "change": "added",
        "type": "file",
        "size": 7,
    }
    assert entries["/Apps"]["type"] == "dir"
    old = entries.get("/Windows/old")
    if old is not None:  # mtools may re-create the directory in the cluster it just freed
        assert old["change"] == "opaque"
    else:
        assert entries["/Windows/old/x.dll"]["change"] == "deleted"
    assert entries["/Windows/old/new.dll"]["change"] == "added"
    text = strata("layer", "diff", "appB:1", "--store", world.store)
    assert text.returncode == 0 and "/Apps/shared.cfg" in text.stdout
    assert "deleted" in text.stdout


def test_block_changes_outside_fat_that_overlap_are_refused(world: World) -> None:
    pkg = package(world.store, "appC", world.root / "out-appC")
    work = world.root / "work-appC"
    work.mkdir()
    raw = to_raw(pkg, work / "pkg.raw")
    mtool("mmd", "-i", fat_spec(raw), "::/C")
    _raw_write(raw, OUTSIDE_A[0], b"C" * 512)
    back_to_child(pkg, raw)
    finalize(world.store, pkg)
    proc = strata(
        "image", "publish", "--name", "clash", "--os", "win", "--app", "appA", "--app", "appC",
        "--store", world.store,
    )  # fmt: skip
    assert proc.returncode == StateError.exit_code, proc.stderr
    assert "outside the volumes merged at file level" in proc.stderr and "appA:1" in proc.stderr
    images = result_of(strata_json("image", "list", "--store", world.store))["images"]
    assert all(row["name"] != "clash" for row in images)


def test_a_layer_packaged_on_another_applies_after_it(world: World) -> None:
    out = world.root / "out-appD"
    out.mkdir()
    req = layers.PackagingRequest(
        layer="appD", os="win", fmt="vhdx", name="appD-pkg", out=str(out), apps=("appA",)
    )
    pkg = layers.create_packaging_disk(req, store=world.store)
    work = world.root / "work-appD"
    work.mkdir()
    raw = to_raw(pkg, work / "pkg.raw")
    mtool("mcopy", "-o", "-i", fat_spec(raw), _local(work, "d", b"plugin of A"), "::/Apps/A/a.txt")
    back_to_child(pkg, raw)
    finalize(world.store, pkg)
    with pytest.raises(StateError, match="higher priority"):
        _publish(world, "misordered", "appD@100", "appA@200", "appB@300")
    result = _publish(world, "ordered", "appA@100", "appD@200", "appB@300")
    assert result["merge"] == "file"
    raw = export_raw(world.store, "ordered", world.root / "ordered.raw")
    assert read(raw, "/Apps/A/a.txt") == b"plugin of A"
    assert read(raw, "/Apps/shared.cfg") == b"owner=B, longer\r\n"
    assert [c["path"] for c in result["conflicts"]] == ["/Apps/shared.cfg"]  # D updates A
    volume = extract(raw, FAT_START, FAT_LENGTH, world.root / "ordered-fat.img")
    assert fsck_fat(volume).returncode == 0


def test_gc_keeps_file_chunks_and_verify_is_clean(world: World) -> None:
    """File-delta chunks are named by the layer manifests' ``file-chunks`` tables, so gc keeps
    them: a merge after gc still finds every file's content."""
    assert strata("store", "gc", "--store", world.store).returncode == 0
    verified = result_of(strata_json("store", "verify", "--store", world.store))
    assert verified["clean"], verified["problems"][:3]
    _publish(world, "after-gc", "appA@100", "appB@200")
    _check_image(world, "after-gc", b"owner=B, longer\r\n")


def test_packaging_disk_on_independent_prerequisites(world: World) -> None:
    """A packaging disk whose prerequisite apps were packaged independently gets their merged
    base; the layer made on it publishes with them (after them) and keeps its own files."""
    out = world.root / "out-appE"
    out.mkdir()
    req = layers.PackagingRequest(
        layer="appE", os="win", fmt="vhdx", name="appE-pkg", out=str(out), apps=("appA", "appB")
    )
    pkg = layers.create_packaging_disk(req, store=world.store)
    work = world.root / "work-appE"
    work.mkdir()
    raw = to_raw(pkg, work / "pkg.raw")
    assert read(raw, "/Apps/shared.cfg") == b"owner=B, longer\r\n"  # B after A, as listed
    assert read(raw, "/Apps/A/a.txt") == world.files["/Apps/A/a.txt"]
    assert "/BOOT/BOOTX64.EFI" not in tree(raw)
    mtool("mcopy", "-i", fat_spec(raw), _local(work, "e", b"app E"), "::/Apps/e.txt")
    back_to_child(pkg, raw)
    done = finalize(world.store, pkg)
    assert done["file_delta"]["volumes"] == [1] and done["file_delta"]["added"] == 1
    result = _publish(world, "with-e", "appA@1", "appB@2", "appE@3")
    exported = export_raw(world.store, "with-e", world.root / "with-e.raw")
    assert read(exported, "/Apps/e.txt") == b"app E"
    assert read(exported, "/Apps/shared.cfg") == b"owner=B, longer\r\n"
    assert [c["path"] for c in result["conflicts"]] == ["/Apps/shared.cfg"]
    volume = extract(exported, FAT_START, FAT_LENGTH, world.root / "with-e-fat.img")
    assert fsck_fat(volume).returncode == 0
