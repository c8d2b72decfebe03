"""Issue 2 acceptance: raw convert/map/compare through the CLI, checked by qemu-img, cmp and du."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from strata.errors import (
    EXIT_DIFFERENT,
    EXIT_INTERNAL,
    EXIT_USAGE,
    CorruptImage,
    InvalidInput,
    NotFound,
    StrataError,
    Unsupported,
)

from support.fat_tools import make_volume, mtools
from support.images import GiB, MiB, scattered_runs, write_sparse_raw
from support.tools import measure_strata, qemu_img, require, result_of, run, strata, strata_json


@pytest.fixture(scope="module")
def big_sparse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 GiB virtual, 64 MiB of random data in 37 runs."""
    path = tmp_path_factory.mktemp("raw") / "big.raw"
    return write_sparse_raw(path, 8 * GiB, scattered_runs(8 * GiB, 37, 64 * MiB, seed=7))


def test_convert_8g_sparse_is_identical_small_and_lean(big_sparse: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy.raw"
    measured = measure_strata("disk", "convert", "-O", "raw", big_sparse, out)
    assert measured.returncode == 0, measured.stderr
    run([require("cmp"), big_sparse, out])
    allocated = os.stat(out).st_blocks * 512
    assert allocated <= 70 * MiB, f"allocated {allocated} bytes"
    assert measured.peak_rss <= 100 * MiB, f"peak RSS {measured.peak_rss} bytes"
    assert os.path.getsize(out) == 8 * GiB


def _runs(entries: list[dict]) -> list[tuple[int, int, bool, bool]]:
    """Coalesce neighbouring entries with the same data/zero flags."""
    merged: list[list] = []
    for e in entries:
        if merged and merged[-1][2] == e["data"] and merged[-1][3] == e["zero"]:
            merged[-1][1] += e["length"]
        else:
            merged.append([e["start"], e["length"], e["data"], e["zero"]])
    return [tuple(m) for m in merged]


def test_map_agrees_with_qemu(big_sparse: Path) -> None:
    theirs = json.loads(qemu_img("map", "--output=json", "-f", "raw", big_sparse).stdout)
    ours = result_of(strata_json("disk", "map", big_sparse))["map"]
    assert _runs(ours) == _runs(theirs)
    assert sum(1 for r in _runs(ours) if r[2]) == 37


def test_info_json(big_sparse: Path) -> None:
    facts = result_of(strata_json("disk", "info", big_sparse))
    assert facts["format"] == "raw"
    assert facts["virtual-size"] == 8 * GiB
    assert facts["actual-size"] == os.stat(big_sparse).st_blocks * 512
    assert facts["backing-chain"] == []


def test_compare_exit_codes(tmp_path: Path) -> None:
    a = write_sparse_raw(tmp_path / "a.raw", 4 * MiB, [(MiB, 4096)], seed=1)
    b = write_sparse_raw(tmp_path / "b.raw", 4 * MiB, [(MiB, 4096)], seed=1)
    assert strata("disk", "compare", a, b).returncode == 0
    with open(b, "r+b") as f:
        f.seek(MiB + 100)
        f.write(b"\xff")
    proc = strata("disk", "compare", a, b)
    assert proc.returncode == 1
    assert f"offset {MiB + 100}" in proc.stdout
    assert qemu_img("compare", "-f", "raw", "-F", "raw", a, b, check=False).returncode == 1


def test_compare_different_sizes_like_qemu(tmp_path: Path) -> None:
    a = write_sparse_raw(tmp_path / "a.raw", 4 * MiB, [(0, 4096)], seed=3)
    b = write_sparse_raw(tmp_path / "b.raw", 8 * MiB, [(0, 4096)], seed=3)
    assert strata("disk", "compare", a, b).returncode == 0
    assert qemu_img("compare", "-f", "raw", "-F", "raw", a, b, check=False).returncode == 0
    with open(b, "r+b") as f:
        f.seek(6 * MiB)
        f.write(b"\x01")
    assert strata("disk", "compare", a, b).returncode == 1
    assert qemu_img("compare", "-f", "raw", "-F", "raw", a, b, check=False).returncode == 1


def test_create_raw(tmp_path: Path) -> None:
    out = tmp_path / "new.raw"
    assert strata("disk", "create", "-O", "raw", out, "1G").returncode == 0
    assert os.path.getsize(out) == GiB
    assert os.stat(out).st_blocks == 0
    assert qemu_img("info", "--output=json", "-f", "raw", out).returncode == 0


def _bad(tmp_path: Path) -> dict[str, tuple[list[str], int, str]]:
    empty = tmp_path / "empty.img"
    empty.touch()
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n")
    qcow = tmp_path / "x.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", qcow, "1M")
    good = write_sparse_raw(tmp_path / "good.raw", MiB, [(0, 512)])
    return {
        "missing": (["disk", "info", str(tmp_path / "nope.vhd")], NotFound.exit_code, "not found"),
        "directory": (["disk", "info", str(tmp_path)], InvalidInput.exit_code, "is a directory"),
        "empty": (["disk", "info", str(empty)], InvalidInput.exit_code, "is empty"),
        "no format": (["disk", "info", str(text)], Unsupported.exit_code, "no known disk format"),
        "qcow2": (["disk", "info", str(qcow)], Unsupported.exit_code, "qcow2"),
        "unknown -O": (
            ["disk", "convert", "-O", "qcow9", str(good), str(tmp_path / "o")],
            InvalidInput.exit_code,
            "unknown format 'qcow9'",
        ),
        "unknown -o key": (
            ["disk", "convert", "-o", "bogus=1", str(good), str(tmp_path / "o")],
            InvalidInput.exit_code,
            "no option 'bogus'",
        ),
        "bad size": (
            ["disk", "create", str(tmp_path / "n.raw"), "12Q"],
            InvalidInput.exit_code,
            "not a size",
        ),
        "missing dir": (
            ["disk", "convert", str(good), str(tmp_path / "no" / "such" / "o.raw")],
            InvalidInput.exit_code,
            "does not exist",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "empty",
        "no format",
        "qcow2",
        "unknown -O",
        "unknown -o key",
        "bad size",
        "missing dir",
    ],
)
def test_bad_input_one_line_and_exit_code(tmp_path: Path, case: str) -> None:
    args, code, words = _bad(tmp_path)[case]
    proc = strata(*args)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("strata: "), proc.stderr
    assert words in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_bad_input_json_error_event(tmp_path: Path) -> None:
    proc = strata("disk", "info", tmp_path / "nope.raw", "--json")
    assert proc.returncode == NotFound.exit_code
    event = json.loads(proc.stdout.strip())
    assert event["event"] == "error" and event["exit_code"] == NotFound.exit_code


@pytest.mark.parametrize(
    "option", [("--wait", "-1"), ("--wait", "nan"), ("--wait", "inf"), ("--threshold", "nan")]
)
def test_store_gc_refuses_numbers_out_of_range(tmp_path: Path, option: tuple[str, str]) -> None:
    proc = strata("store", "gc", *option, "--store", tmp_path / "store")
    assert proc.returncode == EXIT_USAGE and f"Invalid value for '{option[0]}'" in proc.stderr
    assert not (tmp_path / "store").exists()


def _unmappable(tmp_path: Path, case: str) -> tuple[Path, type[StrataError]]:
    if case == "missing":
        return tmp_path / "nope.raw", NotFound
    if case == "no format":
        text = tmp_path / "notes.txt"
        text.write_text("not a disk")
        return text, Unsupported
    # Opens (its grain directory is read), then fails at the first grain table it reads.
    image = tmp_path / "gd.vmdk"
    source = write_sparse_raw(tmp_path / "s.raw", 8 * MiB, [(0, MiB)])
    assert strata("disk", "convert", "-O", "vmdk", source, image).returncode == 0
    with open(image, "r+b") as f:
        for table in struct.unpack_from("<QQ", f.read(512), 0x30):
            f.seek(table * 512)
            f.write(struct.pack("<I", 0x7FFFFFF0))
    return image, CorruptImage


@pytest.mark.parametrize("json_mode", [False, True])
@pytest.mark.parametrize("case", ["missing", "no format", "first grain table past the end"])
def test_a_failing_map_writes_no_partial_result(tmp_path: Path, case: str, json_mode: bool) -> None:
    image, error = _unmappable(tmp_path, case)
    proc = strata(*(["--json"] if json_mode else []), "disk", "map", image)
    assert proc.returncode == error.exit_code, (proc.returncode, proc.stderr)
    if json_mode:
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [e["event"] for e in events] == ["error"], proc.stdout
        assert events[0]["kind"] == error.__name__
    else:
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1, proc.stderr


def _full_stdout_args(tmp_path: Path, command: str) -> list[str | Path]:
    if command == "disk info":
        return ["disk", "info", write_sparse_raw(tmp_path / "r.raw", MiB, [(0, 4096)])]
    if command == "disk map":  # runs enough to fill stdout's buffer part-way through
        runs = [(offset, 512) for offset in range(0, 8 * MiB, 8192)]
        return ["disk", "map", write_sparse_raw(tmp_path / "f.raw", 8 * MiB, runs)]
    if command == "fs ls":
        volume = make_volume(tmp_path / "fat.img", 12, 8 * MiB)
        mtools("mmd", "-i", volume, "::/dir")
        return ["fs", "ls", volume]
    assert strata("store", "init", "--store", tmp_path / "store").returncode == 0
    return ["layer", "list", "--store", tmp_path / "store"]


@pytest.mark.parametrize("json_mode", [False, True])
@pytest.mark.parametrize("command", ["disk info", "disk map", "fs ls", "layer list"])
def test_a_full_stdout_is_one_line_and_exit_11(
    tmp_path: Path, command: str, json_mode: bool
) -> None:
    """``strata [--json] disk info IMG > /dev/full``: the system refused the write, said in
    one line on stderr (the JSON error event cannot be written either), no traceback."""
    args = [*(["--json"] if json_mode else []), *_full_stdout_args(tmp_path, command)]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "strata", *map(str, args)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert proc.returncode == 11, proc.stderr
    said = [line for line in proc.stderr.splitlines() if not line.startswith("# fat on")]
    assert said == ["strata: No space left on device"], proc.stderr


def test_usage_error_exit_code() -> None:
    assert strata("disk", "convert").returncode == 2
    assert strata("--version").stdout.startswith("strata, version")


def test_convert_refused_before_writing_keeps_existing_output(tmp_path: Path) -> None:
    small = write_sparse_raw(tmp_path / "small.raw", MiB, [(0, 4096)])
    base = tmp_path / "base.vhd"
    assert strata("disk", "create", "-O", "vhd", base, "2M").returncode == 0
    out = tmp_path / "o.vhd"
    out.write_bytes(b"the user's file")
    proc = strata("disk", "convert", "-O", "vhd", "-B", base, small, out)
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert "larger than the source" in proc.stderr
    assert out.read_bytes() == b"the user's file"


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_output(tmp_path: Path) -> None:
    """Converting onto a file system that fills up (a 2 MiB tmpfs): one line naming the
    system's refusal and the file, exit code 11 (not an internal error, no traceback), the
    half-written output removed, and a file it was to replace kept."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    source = write_sparse_raw(tmp_path / "src.raw", 16 * MiB, [(0, 8 * MiB)])
    small = tmp_path / "small"
    small.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", small])
    try:
        out, kept = small / "out.raw", small / "kept.raw"
        kept.write_bytes(b"the user's old image")
        proc = strata("disk", "convert", "-O", "raw", source, out)
        events = strata_json("disk", "convert", "-O", "raw", source, out)
        replacing = strata("disk", "convert", "-O", "raw", source, kept)
        assert replacing.returncode == 11, replacing.stderr
        assert kept.read_bytes() == b"the user's old image"
        assert sorted(p.name for p in small.iterdir()) == ["kept.raw"]
    finally:
        run(["umount", small])
    assert proc.returncode == 11, proc.stderr
    assert f"{out}: No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert "internal error" not in proc.stderr
    error = events[-1]
    assert error["event"] == "error" and error["kind"] == "SystemIOError", error
    assert error["exit_code"] == 11
    assert not out.exists()


def _error_classes(cls: type[StrataError]) -> list[type[StrataError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _error_classes(sub))]


def test_help_and_readme_list_every_exit_code() -> None:
    """``strata --help`` and the README's table name every code a command can exit with."""
    codes = {c.exit_code for c in _error_classes(StrataError)}
    codes |= {0, EXIT_DIFFERENT, EXIT_USAGE, EXIT_INTERNAL}
    help_text = " ".join(strata("--help").stdout.split())
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for code in sorted(codes):
        assert re.search(rf"(?<![\d.]){code} [a-z]", help_text), code
        assert re.search(rf"^\| {code} \| \S", readme, re.M), code


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_help_lists_commands_as_click_would(width: int) -> None:
    """The summaries ``strata --help`` shows equal what click makes from each group's own
    help (which loads every command's module), at any terminal width."""
    import click

    from strata.cli.main import cli

    ours, clicks = click.HelpFormatter(width=width), click.HelpFormatter(width=width)
    ctx = click.Context(cli, info_name="strata")
    cli.format_commands(ctx, ours)
    click.Group.format_commands(cli, ctx, clicks)
    assert ours.getvalue() == clicks.getvalue()
    assert ours.getvalue().count("\n") >= 1 + len(cli.list_commands(ctx))


def test_help_loads_no_command() -> None:
    import subprocess
    import sys

    from strata.cli.main import COMMANDS

    probe = (
        "import sys; from strata.cli.main import run; code = run(['--help']); "
        "print('loaded:', code, *sorted(sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    code, *loaded = out.rpartition("loaded: ")[2].split()
    assert code == "0" and "Commands:" in out
    assert "strata.cli.main" in loaded
    assert not {c.module for c in COMMANDS.values()} & set(loaded)
