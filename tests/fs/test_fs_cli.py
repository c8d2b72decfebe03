"""``strata fs ls|cat`` on whole-disk and partitioned images holding FAT and NTFS, checked
against ntfs-3g (mount + os.walk), mtools, and the same image wrapped in VHDX.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from strata.ops.fs import parse_target

from support.fat_tools import make_volume, mtools_tree, populate
from support.ntfs_tools import mounted, volume, walk_mount
from support.tools import require, result_of, strata, strata_json

MIB = 1 << 20
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ntfs() -> Path:
    return volume(40, "16M")


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory, ntfs: Path) -> Path:
    """GPT: partition 1 FAT16 (populated with mtools), partition 2 the NTFS volume."""
    work = tmp_path_factory.mktemp("fsdisk")
    path = work / "disk.img"
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
    subprocess.run(
        [require("sgdisk"), "-n", "1:2048:+24M", "-n", "2:0:+20M", "-t", "2:0700", str(path)],
        check=True,
        capture_output=True,
    )
    fat = make_volume(work / "fat.img", 16, 24 * MIB)
    with open(path, "r+b") as f:
        f.seek(2048 * 512)
        f.write(fat.read_bytes())
        f.seek((2048 + 24 * 2048) * 512)
        f.write(ntfs.read_bytes())
    populate(path, work, 2048, offset=2048 * 512)
    return path


def cat(*args: object) -> bytes:
    proc = subprocess.run(
        [sys.executable, "-m", "strata", "fs", "cat", *map(str, args)], capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ls(*args: object) -> dict:
    return result_of(strata_json("fs", "ls", *map(str, args)))


def test_parse_target() -> None:
    assert parse_target("disk.img:2") == ("disk.img", 2)
    assert parse_target("odd:name.img") == ("odd:name.img", None)
    assert parse_target("a:b:12") == ("a:b", 12)
    assert parse_target("plain.img") == ("plain.img", None)
    assert parse_target(":3") == (":3", None)


@pytest.mark.parametrize("verb", [("ls",), ("cat", "/README.TXT")])
# The last two: a fullwidth one, an Arabic-Indic three.
@pytest.mark.parametrize("part", ["x", "", "1a", "-1", "\uff11", "\u0663"])
def test_a_part_that_is_no_partition_number_is_invalid_input(
    disk: Path, verb: tuple[str, ...], part: str
) -> None:
    """``IMAGE:x`` of an existing IMAGE is a PART that is no number (exit 3, saying so), not
    a missing file ``IMAGE:x`` (exit 4)."""
    target = f"{disk}:{part}"
    proc = strata("fs", verb[0], target, *verb[1:])
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == (
        f"strata: {target!r}: the part after the last ':' must be a partition number "
        f"(IMAGE[:PART]), not {part!r}\n"
    )
    event = json.loads(strata("fs", verb[0], target, *verb[1:], "--json").stdout.splitlines()[-1])
    assert (event["event"], event["kind"], event["exit_code"]) == ("error", "InvalidInput", 3)


@pytest.mark.parametrize("part", ["0", "00"])
def test_partition_zero_says_partitions_count_from_one(disk: Path, part: str) -> None:
    target = f"{disk}:{part}"
    proc = strata("fs", "ls", target)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == f"strata: {target!r}: partitions are numbered from 1 (IMAGE[:PART])\n"


def test_a_file_named_with_a_colon_is_still_the_image(tmp_path: Path) -> None:
    """A file whose own name is ``NAME:x`` is opened as the image even when ``NAME`` exists;
    a ':' inside a directory name splits nothing."""
    odd = make_volume(tmp_path / "odd:x", 12, 2 * MIB)
    (tmp_path / "odd").write_bytes(b"")
    assert parse_target(str(odd)) == (str(odd), None)
    proc = strata("fs", "ls", odd)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "dir").mkdir()
    missing = tmp_path / "dir:b" / "disk.img"
    assert parse_target(str(missing)) == (str(missing), None)
    assert strata("fs", "ls", missing).returncode == 4


def test_ls_whole_disk_ntfs_matches_ntfs3g(ntfs: Path) -> None:
    report = ls("-r", ntfs)
    assert report["filesystem"] == "ntfs" and report["partition"] is None
    assert report["where"] == "whole disk" and report["warnings"] == []
    with mounted(ntfs) as mnt:
        seen = walk_mount(mnt)
    rows = {r["path"]: r for r in report["entries"]}
    assert set(rows) == set(seen)
    for path, r in rows.items():
        kind = "symlink" if r["type"] in ("symlink", "junction") else r["type"]
        assert kind == seen[path].type, path
        if kind == "file":
            assert r["size"] == seen[path].size, path
        for key in ("created", "modified", "accessed"):
            assert r[key] is not None
        modified = dt.datetime.fromisoformat(r["modified"]) - EPOCH
        assert modified // dt.timedelta(microseconds=1) == seen[path].mtime_ns // 1000, path
    assert {s["name"] for s in rows["/docs/with-ads.txt"]["streams"]} == {
        "extra",
        "Zone.Identifier",
    }
    assert rows["/link-to-readme"]["target"] == "docs/readme.txt"
    assert "compressed" in rows["/compressed/text.txt"]["attributes"]


def test_ls_one_level_and_system(ntfs: Path) -> None:
    top = {r["path"] for r in ls(ntfs)["entries"]}
    assert "/docs" in top and "/docs/readme.txt" not in top and "/$MFT" not in top
    assert "/$MFT" in {r["path"] for r in ls("--system", ntfs)["entries"]}
    assert [r["path"] for r in ls(ntfs, "/docs/readme.txt")["entries"]] == ["/docs/readme.txt"]


def test_cat_ntfs_matches_ntfs3g(ntfs: Path) -> None:
    with mounted(ntfs) as mnt:
        for path in ("/docs/big.bin", "/compressed/mixed.bin", "/docs/with-ads.txt:extra"):
            assert cat(ntfs, path) == (mnt / path.lstrip("/")).read_bytes(), path


def test_partitioned_disk_picks_first_recognised(disk: Path, tmp_path: Path) -> None:
    report = ls("-r", disk)
    assert report["filesystem"] == "fat" and report["partition"] == 1
    text = strata("fs", "ls", disk)
    assert "fat on partition 1" in text.stderr
    tree = mtools_tree(disk, tmp_path, offset=2048 * 512)
    rows = {r["path"]: r for r in report["entries"]}
    assert set(rows) == set(tree)
    for path, data in tree.items():
        assert (rows[path]["type"] == "dir") == (data is None)
        if data is not None:
            assert rows[path]["size"] == len(data)
    path = "/Dir/Sub/Deep/A long file name with spaces.dat"
    assert cat(disk, path) == tree[path]


def test_partition_number_selects_ntfs(disk: Path, ntfs: Path) -> None:
    report = ls("-r", f"{disk}:2")
    assert report["filesystem"] == "ntfs" and report["partition"] == 2
    assert report["entries"] == ls("-r", ntfs)["entries"]
    assert cat(f"{disk}:2", "/docs/Ünïcödé dir/日本語 ファイル.txt") == "こんにちは\n".encode()


def test_through_vhdx(disk: Path, tmp_path: Path) -> None:
    vhdx = tmp_path / "disk.vhdx"
    assert strata("disk", "convert", "-O", "vhdx", disk, vhdx).returncode == 0
    assert ls("-r", f"{vhdx}:2")["entries"] == ls("-r", f"{disk}:2")["entries"]
    a, b = cat(f"{vhdx}:2", "/docs/big.bin"), cat(f"{disk}:2", "/docs/big.bin")
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest() and len(a) > MIB


@pytest.mark.parametrize(
    ("args", "code", "kind"),
    [
        (("ls", "{disk}:9"), 4, "NotFound"),
        (("ls", "{disk}:2", "/no/such/file"), 4, "NotFound"),
        (("cat", "{disk}:2", "/docs"), 3, "InvalidInput"),
        (("cat", "{disk}:1", "/README.TXT:stream"), 3, "InvalidInput"),
        (("ls", "{blank}"), 4, "NotFound"),
    ],
)
def test_errors(disk: Path, tmp_path: Path, args: tuple, code: int, kind: str) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(MIB))
    argv = [a.format(disk=disk, blank=blank) for a in args]
    out = strata("fs", *argv, "--json")
    assert out.returncode == code, out.stderr
    event = json.loads(out.stdout.splitlines()[-1])
    assert event["event"] == "error" and event["kind"] == kind


@pytest.mark.parametrize(("part", "path"), [(1, "/Dir/Sub"), (2, "/docs")])
def test_cat_of_a_directory_names_the_path_asked_for(disk: Path, part: int, path: str) -> None:
    proc = strata("fs", "cat", f"{disk}:{part}", path)
    assert proc.returncode == 3
    assert proc.stderr.strip() == f"strata: {path} is a directory"


@pytest.mark.parametrize(
    "args", [("fs", "cat", "{ntfs}", "/docs/big.bin"), ("fs", "ls", "-r", "{big}")]
)
def test_a_reader_that_stops_early_ends_the_command_quietly(ntfs: Path, args: tuple) -> None:
    """``strata fs cat IMG PATH | head -c 10``: exit 0, nothing on stderr (click alone made
    it exit 1, the code for "difference found")."""
    big = volume(5000)
    argv = [a.format(ntfs=ntfs, big=big) for a in args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "strata", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()  # the output is far larger than the pipe: the next write fails
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, stderr
    assert b"Error" not in stderr and b"Exception" not in stderr, stderr
