"""The text listings read like tables: a header line naming the columns, then one line per
row whose cells start where their header does, holding what ``--json`` reports."""

from __future__ import annotations

from pathlib import Path

from strata.units import human_size, utc_time

from support.fat_tools import make_volume
from support.images import MiB, write_sparse_raw
from support.ntfs_tools import volume
from support.tools import result_of, strata, strata_json

TARGET_COLUMNS = ("name", "format", "options", "platform", "description")


def _cells(line: str, starts: list[int]) -> list[str]:
    """The cells of ``line`` cut at the header's column starts, stripped."""
    ends = [*starts[1:], len(line)]
    return [line[a:b].strip() for a, b in zip(starts, ends, strict=True)]


def _under(header: str, right: tuple[str, ...] = (), **cells: str) -> str:
    """The line with each cell under its column's header: starting where the header starts,
    or for the ``right``-aligned columns ending where it ends."""
    line = ""
    for column, cell in cells.items():
        at = header.index(column)
        start = at + len(column) - len(cell) if column in right else at
        assert not line or start > len(line), (column, cell, header)  # a space between
        line = line.ljust(start) + cell
    return line


def test_image_targets_has_a_header_and_the_json_rows_in_its_columns() -> None:
    targets = result_of(strata_json("image", "targets"))["targets"]
    proc = strata("image", "targets")
    assert proc.returncode == 0, proc.stderr
    header, *lines = proc.stdout.splitlines()
    assert tuple(header.split()) == TARGET_COLUMNS
    starts = [header.index(column) for column in TARGET_COLUMNS]
    assert len(lines) == len(targets)
    for line, target in zip(lines, targets, strict=True):
        # Each cell ends before the next column starts (a space before it), so no cell spills.
        assert all(line[start - 1] == " " for start in starts[1:]), line
        assert _cells(line, starts) == [
            target["name"],
            target["format"],
            ",".join(target["options"]) or "-",
            target["platform"] or "-",
            target["description"],
        ]


def test_store_stats_of_an_empty_store_shows_no_python_none(tmp_path: Path) -> None:
    """A ratio of nothing is null in --json and ``-`` in the text, not Python's ``None``."""
    store = tmp_path / "store"
    assert strata("store", "init", "--store", store).returncode == 0
    facts = result_of(strata_json("store", "stats", "--store", store))
    assert facts["dedup_ratio"] is None and facts["compression_ratio"] is None
    proc = strata("store", "stats", "--store", store)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert lines["dedup ratio"] == lines["compression ratio"] == "-"
    assert "None" not in proc.stdout


def test_layer_show_and_history_have_headers_over_the_json_rows(tmp_path: Path) -> None:
    store = tmp_path / "store"
    disk = write_sparse_raw(tmp_path / "os.raw", 4 * MiB, [(0, 64 << 10)])
    imported = ("os", "import", "win", disk, "--version", "1", "--store", store)
    assert strata(*imported, "--comment", "gold image").returncode == 0
    layer = result_of(strata_json("layer", "show", "win", "--store", store))["layer"]
    header, *rows = strata("layer", "show", "win", "--store", store).stdout.splitlines()[1:]
    columns = ("version", "state", "base", "data", "updated")
    assert tuple(header.split()) == columns
    (version,) = layer["versions"]
    assert rows == [
        _under(
            header,
            right=("data",),
            version=version["name"],
            state=version["state"],
            base=version["base"] or "-",
            data=human_size(version["logical_size"]),
            updated=utc_time(version["updated"]),
        )
    ]
    history = result_of(strata_json("layer", "history", "--store", store))["history"]
    header, *lines = strata("layer", "history", "--store", store).stdout.splitlines()
    assert header.split()[:3] == ["time", "operation", "result"]
    assert len(lines) == len(history)
    for line, entry in zip(lines, history, strict=True):
        cells = {"time": utc_time(entry["time"]), "operation": entry["operation"]}
        assert line.startswith(_under(header, **cells, result=str(entry["result"])) + " ")
    assert lines[-1].endswith('win:1  "gold image"')


def test_disk_formats_says_each_options_choices_and_default_as_typed() -> None:
    formats = result_of(strata_json("disk", "formats"))["formats"]
    text = strata("disk", "formats").stdout
    assert not {"None", "True", "False"} & set(text.replace("(", " ").replace(")", " ").split())
    lines = iter(text.splitlines())
    for fmt in formats:
        assert next(lines) == f"{fmt['name']}: {fmt['description']}"
        for name, option in fmt["options"].items():
            line = next(lines)
            assert line.startswith(f"    -o {name}=...  {option['help']}")
            if option["choices"]:
                assert f"(one of {', '.join(map(str, option['choices']))}" in line
            default = option["default"]
            if isinstance(default, bool):
                assert line.endswith(f"default: {'on' if default else 'off'})")
            elif default is not None:
                assert line.endswith(f"default: {default})")
            else:
                assert "default:" not in line
    assert next(lines, None) is None


def _partitions(image: Path) -> tuple[str, dict[str, object]]:
    proc = strata("disk", "partitions", image)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, result_of(strata_json("disk", "partitions", image))


def test_disk_partitions_says_a_disk_has_no_partition_table(tmp_path: Path) -> None:
    """All zeros, or a file system on the whole disk, is no table: said in one line, not an
    empty table header; --json keeps its shape (scheme none, no partitions) and names the
    file system the whole disk holds."""
    zeros = write_sparse_raw(tmp_path / "zeros.raw", 8 * MiB, [])
    fat = make_volume(tmp_path / "fat.img", 16, 16 * MiB)
    for image, found in ((zeros, None), (fat, "fat"), (volume(40, "16M"), "ntfs")):
        text, report = _partitions(image)
        assert (report["scheme"], report["partitions"], report["filesystem"]) == ("none", [], found)
        if found is None:
            assert text == f"{image}: no partition table\n"
        else:
            assert text == (
                f"{image}: no partition table: a {found} file system on the whole disk; "
                "strata fs ls reads it\n"
            )


def test_disk_partitions_says_a_table_has_no_partitions(tmp_path: Path) -> None:
    image = write_sparse_raw(tmp_path / "mbr.raw", 8 * MiB, [])
    with image.open("r+b") as f:
        f.seek(510)
        f.write(b"\x55\xaa")  # an MBR whose four entries are empty
    text, report = _partitions(image)
    assert (report["scheme"], report["partitions"], report["filesystem"]) == ("mbr", [], None)
    assert text == f"{image}: mbr 0x00000000\nno partitions\n"


def test_layer_diff_says_why_a_version_has_no_file_delta(tmp_path: Path) -> None:
    """An OS layer is imported as blocks; an app version whose packaging disk held no FAT or
    NTFS volume captured blocks only: ``layer diff`` says so rather than printing nothing."""
    store, out = tmp_path / "store", tmp_path / "out"
    out.mkdir()
    blank = write_sparse_raw(tmp_path / "blank.raw", 8 * MiB, [])
    steps = [
        ("os", "import", "blank", blank, "--version", "1"),
        ("packaging-disk", "create", "--layer", "app", "--os", "blank", "--format", "vhd",
         "--name", "pkg", "--out", out),
        ("finalize", "--disk", out / "pkg.vhd", "--layer", "app", "--version", "1"),
    ]  # fmt: skip
    for step in steps:
        proc = strata(*step, "--store", store)
        assert proc.returncode == 0, proc.stderr
    for ref, why in (("blank:1", "OS layers are imported from a disk as blocks"),
                     ("app:1", "finalize found no FAT or NTFS volume")):  # fmt: skip
        diff = result_of(strata_json("layer", "diff", ref, "--store", store))
        assert (diff["file_delta"], diff["volumes"]) == (False, [])
        assert diff["reason"].startswith(why)
        text = strata("layer", "diff", ref, "--store", store)
        assert text.returncode == 0, text.stderr
        assert text.stdout == f"layer: {ref}\nno file delta: {diff['reason']}\n"
