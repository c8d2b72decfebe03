"""The files packaging disks leave beside the catalog: `packaging-disk list` says where each
disk is (qemu-img opens what it names, in the format it names); `packaging-disk prune`
removes a cached base once no disk uses it, never while one does (whatever made that disk),
and the disks left still read their whole content (qemu-img resolves their parents and
compares them with the expected disk)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from strata.errors import InvalidInput

from support.images import MiB, random_bytes, write_sparse_raw
from support.layers import (
    apply_to_raw,
    apply_with_strata,
    compare_with_qemu,
    finalize_args,
)
from support.tools import qemu_img, qemu_info, result_of, strata, strata_as_user, strata_json
from support.vhd_tools import pyvhdi_module

OS_SIZE = 64 * MiB
WRITES = [(3 * MiB + 512, random_bytes(8192, 5))]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store holding OS layer win:1, imported from ``os.raw`` beside it."""
    raw = write_sparse_raw(tmp_path / "os.raw", OS_SIZE, [(0, MiB), (40 * MiB, 2 * MiB)], seed=4)
    store = tmp_path / "store"
    proc = strata("os", "import", "win", raw, "--version", "1", "--store", store)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "out").mkdir()
    return store


def _package(store: Path, layer: str, fmt: str) -> dict[str, Any]:
    args = ["--layer", layer, "--os", "win", "--format", fmt, "--name", layer]
    out = store.parent / "out"
    return result_of(strata_json("packaging-disk", "create", *args, "--out", out, "--store", store))


def _prune(store: Path, *extra: str) -> dict[str, Any]:
    return result_of(
        strata_json("packaging-disk", "prune", store.parent / "out", *extra, "--store", store)
    )


def _base_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("strata-base-"))


def _allocated(*paths: str | Path) -> int:
    return sum(os.stat(p).st_blocks * 512 for p in paths)


def test_a_base_goes_only_once_no_disk_uses_it(store: Path) -> None:
    out = store.parent / "out"
    a, b = _package(store, "a", "vhd"), _package(store, "b", "vmdk")
    bases = {pkg["layer"]: pkg["base"]["path"] for pkg in (a, b)}
    before = _base_files(out)
    assert len(before) == 4  # each base and its description

    kept = _prune(store)
    assert kept["removed"] == [] and kept["freed_bytes"] == 0
    assert {e["path"]: e["used_by"] for e in kept["kept"]} == {
        bases["a"]: [a["disk_path"]],
        bases["b"]: [b["disk_path"]],
    }
    assert _base_files(out) == before

    finalized = result_of(strata_json(*finalize_args(a, store), "--remove-disk"))
    assert finalized["removed"] == [a["disk_path"], a["iso"]]
    assert finalized["unused_bases"] == [bases["a"]]

    size = _allocated(bases["a"], bases["a"] + ".json")
    dry = _prune(store, "--dry-run")
    assert dry["dry_run"] and dry["removed"] == [{"path": bases["a"], "bytes": size}]
    assert _base_files(out) == before  # nothing removed

    pruned = _prune(store)
    assert pruned["removed"] == [{"path": bases["a"], "bytes": size}]
    assert pruned["freed_bytes"] == size > 0
    assert [e["path"] for e in pruned["kept"]] == [bases["b"]]
    assert not os.path.exists(bases["a"]) and not os.path.exists(bases["a"] + ".json")

    # The disk left reads whole through its parent (qemu-img reads VMDK children, not VHD
    # or VHDX ones).
    apply_with_strata(Path(b["disk_path"]), WRITES)
    expected = store.parent / "expected.raw"
    expected.write_bytes((store.parent / "os.raw").read_bytes())
    apply_to_raw(expected, WRITES)
    assert compare_with_qemu(expected, Path(b["disk_path"]), "vmdk") == 0


def test_the_text_result_says_which_base_is_unused(store: Path) -> None:
    a = _package(store, "a", "vhd")
    proc = strata(*finalize_args(a, store), "--remove-disk")
    assert proc.returncode == 0, proc.stderr
    base = a["base"]["path"]
    assert f"removed {a['disk_path']}, {a['iso']}" in proc.stdout
    assert f"no disk uses the base {base} any more" in proc.stdout
    assert f"`strata packaging-disk prune {os.path.dirname(base)}`" in proc.stdout
    proc = strata("packaging-disk", "prune", os.path.dirname(base), "--store", store)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"removed {base} (")


def test_a_deleted_packaging_version_names_its_unused_base(store: Path) -> None:
    a = _package(store, "a", "vmdk")
    deleted = result_of(strata_json("layer", "delete", "a:1", "--remove-disk", "--store", store))
    assert deleted["removed"] == [a["disk_path"], a["iso"]]
    assert deleted["unused_bases"] == [a["base"]["path"]]
    kept = result_of(strata_json("layer", "delete", "a", "--store", store))
    assert kept["unused_bases"] == []  # without --remove-disk nothing is looked at


def test_a_child_made_by_qemu_img_keeps_its_base(store: Path) -> None:
    """Whatever made a disk, a disk in the directory that names a base as parent keeps it."""
    a = _package(store, "a", "vmdk")
    base = a["base"]["path"]
    result_of(strata_json("layer", "delete", "a:1", "--remove-disk", "--store", store))
    child = store.parent / "out" / "by-qemu.vmdk"
    qemu_img("create", "-f", "vmdk", "-b", os.path.basename(base), "-F", "vmdk", child)
    pruned = _prune(store)
    assert pruned["removed"] == []
    assert pruned["kept"] == [
        {"path": base, "bytes": _allocated(base, base + ".json"), "used_by": [str(child)]}
    ]
    assert qemu_img("check", "-f", "vmdk", child, check=False).returncode == 0


@pytest.mark.parametrize("what", ["qcow2", "damaged"])
def test_a_disk_that_cannot_be_read_keeps_every_base(store: Path, what: str) -> None:
    """Which base a qcow2 (strata does not read it) or a damaged disk stands on cannot be
    told: every base in the directory stays, and a warning names the disk."""
    out = store.parent / "out"
    a = _package(store, "a", "vhd")
    base = a["base"]["path"]
    result_of(strata_json("layer", "delete", "a:1", "--remove-disk", "--store", store))
    if what == "qcow2":
        other = out / "other.qcow2"
        qemu_img("create", "-f", "qcow2", "-b", base, "-F", "vpc", other)
    else:
        other = out / "other.vhd"
        qemu_img("create", "-f", "vpc", "-o", "subformat=dynamic", other, "8M")
        data = bytearray(other.read_bytes())
        data[-512 + 64] ^= 0xFF  # the footer checksum
        other.write_bytes(bytes(data))
    events = strata_json("packaging-disk", "prune", out, "--store", store)
    pruned = result_of(events)
    assert pruned["removed"] == [] and [e["path"] for e in pruned["kept"]] == [base]
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and str(other) in warnings[0], warnings
    assert "every base in" in warnings[0]
    assert os.path.exists(base)


def test_a_description_without_its_base_is_removed(store: Path) -> None:
    out = store.parent / "out"
    stray = out / "strata-base-0123456789abcdef.vhd.json"
    stray.write_text("{}")
    notes = out / "notes.txt"
    notes.write_text("mine\n")
    size = _allocated(stray)
    pruned = _prune(store)
    assert pruned["removed"] == [{"path": str(stray), "bytes": size}]
    assert not stray.exists() and notes.read_text() == "mine\n"


def test_not_a_directory_is_refused(store: Path) -> None:
    missing = store.parent / "nowhere"
    proc = strata("packaging-disk", "prune", missing, "--store", store)
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr
    a_file = store.parent / "os.raw"
    proc = strata("packaging-disk", "prune", store.parent / "out", a_file, "--store", store)
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert proc.stderr == f"strata: {a_file}: not a directory\n"


def test_a_directory_named_twice_is_pruned_once(store: Path) -> None:
    a, b = _package(store, "a", "vhd"), _package(store, "b", "vmdk")
    result_of(strata_json("layer", "delete", "a:1", "--remove-disk", "--store", store))
    out = store.parent / "out"
    events = strata_json("packaging-disk", "prune", out, f"{out}/", out / ".", "--store", store)
    assert [e["path"] for e in result_of(events)["removed"]] == [a["base"]["path"]]
    assert [e["path"] for e in result_of(events)["kept"]] == [b["base"]["path"]]


def test_prune_waits_for_the_directory_lock(store: Path) -> None:
    """A packaging disk is made on its base under the directory's lock: prune takes the
    same lock, so it never removes a base a child is being made on."""
    out = store.parent / "out"
    a = _package(store, "a", "vhd")
    result_of(strata_json("layer", "delete", "a:1", "--remove-disk", "--store", store))
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cmd = [sys.executable, "-m", "strata", "packaging-disk", "prune", str(out)]
        proc = subprocess.Popen([*cmd, "--store", str(store)], stdout=subprocess.PIPE)
        time.sleep(1.5)
        assert proc.poll() is None  # still waiting
        assert os.path.exists(a["base"]["path"])
    finally:
        os.close(fd)
    assert proc.wait(60) == 0
    assert not os.path.exists(a["base"]["path"])


def _listed(store: Path) -> list[dict[str, Any]]:
    return result_of(strata_json("packaging-disk", "list", "--store", store))["disks"]


def test_list_says_where_each_packaging_disk_is(store: Path) -> None:
    assert _listed(store) == []
    assert strata("packaging-disk", "list", "--store", store).stdout == "no packaging disks\n"
    made = {fmt: _package(store, f"app-{fmt}", fmt) for fmt in ("vhd", "vhdx", "vmdk")}
    rows = _listed(store)
    assert [(r["layer"], r["version"], r["state"]) for r in rows] == [
        (f"app-{fmt}", "1", "packaging") for fmt in made
    ]
    for row, (fmt, pkg) in zip(rows, made.items(), strict=True):
        assert (row["disk"], row["job_iso"], row["base"]) == (
            pkg["disk_path"],
            pkg["iso"],
            pkg["base"]["path"],
        )
        assert row["disk_present"] and row["base_present"] and row["problem"] is None
        assert row["format"] == fmt
        assert _parent_named_by(row["disk"], fmt).endswith(os.path.basename(row["base"]))

    # Finalized, its disk kept: listed as left behind; removed: no longer listed.
    kept = result_of(strata_json(*finalize_args(made["vmdk"], store)))
    assert kept["removed"] == []
    gone = result_of(strata_json(*finalize_args(made["vhd"], store), "--remove-disk"))
    assert gone["removed"]
    os.unlink(made["vhdx"]["disk_path"])  # a disk removed by hand
    rows = {r["layer"]: r for r in _listed(store)}
    assert set(rows) == {"app-vhdx", "app-vmdk"}
    assert not rows["app-vhdx"]["disk_present"] and rows["app-vmdk"]["state"] == "deployable"

    text = strata("packaging-disk", "list", "--store", store).stdout.splitlines()
    assert text[0].split() == ["version", "state", "format", "created", "disk"]
    assert text[1].endswith(f"{made['vhdx']['disk_path']} (missing)")
    assert text[2].endswith(f"{made['vmdk']['disk_path']} (finalized; the disk can go)")


def _parent_named_by(disk: str, fmt: str) -> str:
    """The parent file name in the disk, as libvhdi (VHD, VHDX) or qemu-img (VMDK) reads it."""
    if fmt == "vmdk":
        return str(qemu_info(disk, "vmdk")["backing-filename"])
    f = pyvhdi_module().file()
    f.open(disk)
    try:
        return str(f.parent_filename)
    finally:
        f.close()


def test_list_names_a_damaged_record(store: Path) -> None:
    pkg = _package(store, "a", "vhd")
    Path(record_path_of(store, pkg)).write_text("{not json")
    (row,) = _listed(store)
    assert row["problem"] == "damaged packaging record" and row["disk"] is None
    line = strata("packaging-disk", "list", "--store", store).stdout.splitlines()[1]
    assert line.startswith("a:1 ") and line.endswith("- (damaged packaging record)")


def record_path_of(store: Path, pkg: dict[str, Any]) -> str:
    from strata.ops.packaging import record_path
    from strata.store import Store

    with Store(store, readonly=True) as st:
        return record_path(st, pkg["layer"], pkg["version"])


def test_a_moved_directory_keeps_serving_its_base(store: Path) -> None:
    """An output directory renamed with its cached base: the next packaging disk there is
    made on that base (not written again) at its new path, and finalizes."""
    a = _package(store, "a", "vhdx")
    moved = store.parent / "moved"
    (store.parent / "out").rename(moved)
    (store.parent / "out").mkdir()
    base = moved / os.path.basename(a["base"]["path"])
    inode = base.stat().st_ino
    args = ["--layer", "b", "--os", "win", "--format", "vhdx", "--name", "b", "--out", moved]
    b = result_of(strata_json("packaging-disk", "create", *args, "--store", store))
    assert b["base"]["path"] == str(base) and base.stat().st_ino == inode
    marker = json.loads(Path(f"{base}.json").read_text())
    assert marker["path"] == str(base)
    assert _parent_named_by(b["disk_path"], "vhdx").endswith(base.name)
    apply_with_strata(Path(b["disk_path"]), WRITES)
    done = result_of(strata_json(*finalize_args(b, store)))
    assert done["state"] == "deployable" and done["changed_blocks"] == 1


def _as_user_with(directory: Path, mode: int, *args: str | Path) -> list[dict[str, Any]]:
    """The JSON events of a successful command run as a user bound by permission bits while
    ``directory`` has ``mode``."""
    directory.chmod(mode)
    try:
        proc = strata_as_user(*args, "--json")
    finally:
        directory.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_a_directory_that_cannot_be_listed_fails_no_finalize(store: Path) -> None:
    """Which bases a finalize left unused is looked for after its commit: a directory that
    cannot be listed (write and search permission only) leaves the hint out, and the
    finalize succeeds."""
    a = _package(store, "a", "vhd")
    done = result_of(
        _as_user_with(store.parent / "out", 0o300, *finalize_args(a, store), "--remove-disk")
    )
    assert done["state"] == "deployable" and done["unused_bases"] == []
    assert done["removed"] == [a["disk_path"], a["iso"]]


def test_a_disk_that_cannot_be_removed_is_a_warning_after_finalize(store: Path) -> None:
    """finalize --remove-disk removes the disk after its commit: a directory the user may
    not write leaves the disk in place with a warning, and the finalize succeeds."""
    a = _package(store, "a", "vhd")
    events = _as_user_with(store.parent / "out", 0o555, *finalize_args(a, store), "--remove-disk")
    done = result_of(events)
    assert done["state"] == "deployable" and done["removed"] == []
    assert done["warnings"] == [
        f"{a['disk_path']} could not be removed: Permission denied",
        f"{a['iso']} could not be removed: Permission denied",
    ]
    assert [e["message"] for e in events if e["event"] == "warning"][-2:] == done["warnings"]
    assert os.path.exists(a["disk_path"])


def test_a_base_that_cannot_be_removed_is_kept_with_a_warning(store: Path) -> None:
    out = store.parent / "out"
    a = _package(store, "a", "vhd")
    result_of(strata_json("layer", "delete", "a:1", "--remove-disk", "--store", store))
    pruned = result_of(_as_user_with(out, 0o555, "packaging-disk", "prune", out, "--store", store))
    assert pruned["removed"] == [] and pruned["freed_bytes"] == 0
    assert pruned["warnings"] == [f"{a['base']['path']} could not be removed: Permission denied"]
    assert os.path.exists(a["base"]["path"])
