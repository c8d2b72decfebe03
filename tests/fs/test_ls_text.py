"""``strata fs ls`` output built from columns: the byte-matrix columns of ``ops.textcols``
against the row-at-a-time Python they replace; the text of a whole listing against the JSON
rows of the same listing (which tests/fs/test_fs_cli.py checks against ntfs-3g and mtools),
each row formatted the way the CLI printed it before the columns existed; the UTF-8 text
joined by the ``join_spans`` kernel (``Table.text``) against its reference ``Table.lines``;
the JSON text built from the columns and streamed against ``json.dumps`` of the rows.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strata.blockdev import RawFileDevice
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import structs as s
from strata.fs.ntfs.structs import FILETIME_UNIX_OFFSET
from strata.ops import fs as ops
from strata.ops import textcols as tc
from strata.ops.table import Labels, Table, printable

from support.fat_tools import make_volume, populate
from support.ntfs_tools import attr_offsets, small_volume, volume, write_record
from support.tools import result_of, strata, strata_json

FILETIME_MAX = 2**63 - 1
YEAR_10000 = FILETIME_UNIX_OFFSET + 253402300800 * 10**7  # first FILETIME past 9999


def reference_stamp(filetime: int) -> str:
    """What the listing showed for one value before the byte matrices (``datetime``), cut to
    the second, or ``-``."""
    if filetime <= 0 or filetime >= YEAR_10000:
        return f"{'-':<19}"
    micros = (filetime - FILETIME_UNIX_OFFSET) // 10
    when = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)
    return when.isoformat(timespec="seconds")


EDGES = [
    0,
    -1,
    1,
    FILETIME_UNIX_OFFSET - 1,
    FILETIME_UNIX_OFFSET,
    FILETIME_UNIX_OFFSET + 10**7 - 1,
    YEAR_10000 - 1,
    YEAR_10000,
    FILETIME_MAX,
    FILETIME_UNIX_OFFSET + (951782400 - 1) * 10**7,  # 2000-02-28T23:59:59, then leap day
    FILETIME_UNIX_OFFSET + 951782400 * 10**7,
]


@given(st.lists(st.integers(-(2**63), FILETIME_MAX), max_size=200))
def test_stamps_match_python_datetime(filetimes: list[int]) -> None:
    values = np.array(filetimes + EDGES, np.int64)
    got = tc.decoded(tc.stamps_to_seconds(values))
    assert got == [reference_stamp(v) for v in values.tolist()]


@given(st.integers(1, 18), st.lists(st.integers(0, 10**18 - 1), max_size=100))
def test_right_aligned_matches_format(width: int, values: list[int]) -> None:
    limit = 10**width
    picked = [v % limit for v in values] + [0, 9 % limit, limit - 1, limit // 10]
    got = tc.decoded(tc.right_aligned(np.array(picked, np.int64), width))
    assert got == [f"{v:>{width}}" for v in picked]


@given(st.lists(st.integers(1, FILETIME_MAX), max_size=200))
def test_iso_stamps_match_numpy(filetimes: list[int]) -> None:
    """The JSON times: what the listing wrote with ``numpy.datetime_as_string`` before."""
    values = np.array(filetimes + [v for v in EDGES if v > 0], np.int64)
    matrix, valid = tc.stamps_to_iso(values)
    micros = (values - FILETIME_UNIX_OFFSET) // 10
    expected = np.datetime_as_string(micros[valid].astype("datetime64[us]"), "us")
    assert [s for s, ok in zip(tc.decoded(matrix), valid, strict=True) if ok] == [
        f"{s}+00:00" for s in expected.tolist()
    ]
    assert valid.tolist() == [0 < v < YEAR_10000 for v in values.tolist()]


@given(
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40),
    st.lists(st.integers(-5, 40), max_size=200),
)
def test_distinct_codes_is_numpy_unique(wide: list[int], dense: list[int]) -> None:
    """Both ways of ``distinct_codes``: values spread wide (sorted set) and values in a
    narrow range (marked and counted)."""
    for values in (np.array(wide, np.int64), np.array(dense, np.int64)):
        distinct, codes = tc.distinct_codes(values)
        expected, inverse = np.unique(values, return_inverse=True)
        assert np.array_equal(distinct, expected) and np.array_equal(codes, inverse.reshape(-1))


def test_seconds_of_matches_the_matrix() -> None:
    values = np.array(EDGES, np.int64)
    iso = [None if s.startswith("-") else s for s in map(reference_stamp, EDGES)]
    assert np.array_equal(tc.seconds_of(iso), tc.stamps_to_seconds(values))


def line_before(row: dict[str, Any]) -> str:
    """A row as the CLI printed it before ``Table.lines`` (one f-string per row)."""
    modified = (row.get("modified") or "-")[:19]
    attrs = ",".join(row["attributes"]) or "-"
    link = f" -> {row['target']}" if "target" in row else ""
    return f"{row['type']:<8} {row['size']:>14} {modified:<19} {attrs:<24} {row['path']}{link}"


@pytest.fixture(scope="module")
def fat_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("fatls")
    path = make_volume(work / "fat.img", 16, 24 << 20)
    populate(path, work, 0)
    return path


@pytest.mark.parametrize("args", [("-r",), (), ("--system",), ("-r", "{image}", "/docs")])
@pytest.mark.parametrize("kind", ["ntfs", "fat"])
def test_text_is_the_json_rows(kind: str, args: tuple[str, ...], fat_disk: Path) -> None:
    image = str(volume(40, "16M") if kind == "ntfs" else fat_disk)
    if "{image}" in args:
        args = (*args[:1], image, "/Dir" if kind == "fat" else args[2])
    else:
        args = (*args, image)
    rows = result_of(strata_json("fs", "ls", *args))["entries"]
    text = strata("fs", "ls", *args).stdout
    assert rows, "an empty listing proves nothing"
    assert text == "".join(f"{line_before(r)}\n" for r in rows)
    if kind == "ntfs" and "-r" in args and len(args) == 2:
        assert " -> " in text and "compressed" in text  # a link and an attribute were shown


def test_sizes_wider_than_the_column() -> None:
    table = Table(
        path=["/big", "/small", "/negative"],
        kind=["file", "file", "file"],
        size=[10**14 + 5, 7, -3],
        flags=[0, 0x20, 0],
        names_of=lambda bits: ["archive"] if bits else [],
        stamps=lambda k: [None, "2026-01-02T03:04:05.123456+00:00", None],
    )
    rows = table.rows()
    assert "".join(table.lines()) == "".join(f"{line_before(r)}\n" for r in rows)
    assert_text_is_lines(table)


SURROGATES = st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010, categories=["Cs", "Co"])


def assert_text_is_lines(table: Table) -> None:
    """``Table.text`` is ``Table.lines`` in UTF-8, whatever the batch."""
    for batch in (1, 2, 3, 8192):
        expected = "".join(table.lines(batch)).encode()
        assert b"".join(table.text(batch)) == expected, batch


@pytest.mark.parametrize("args", [("/", True, False), ("/", False, True), ("/", True, True)])
@pytest.mark.parametrize("kind", ["ntfs", "fat"])
def test_text_is_lines_of_a_volume(kind: str, args: tuple[str, bool, bool], fat_disk: Path) -> None:
    image = str(volume(40, "16M") if kind == "ntfs" else fat_disk)
    table = ops.ls(image, *args, columns=True)["entries"]
    assert len(table) > 5
    assert_text_is_lines(table)


ASCII = {
    "/docs/Ünïcödé dir": "Unicode dir",
    "/docs/Ünïcödé dir/日本語 ファイル.txt": "japanese.txt",
}
RENAMES = {
    # every name ASCII without controls: the paths go into the text as they are
    "ascii": ASCII,
    # ASCII, but a newline, a NUL and an escape in names; 'level00-cm' sorts between the
    # directory '/level00' and the paths below it
    "controls": {
        **ASCII,
        "/docs/readme.txt": "rea\nme.txt",
        "/docs/empty": "em\0ty",
        "/many/d0000/f000003.txt": "f00\x00003.txt",  # in a run of names of one directory
        "/docs/big.bin": "\x1b[31mab",
        "/compressed": "level00-cm",
    },
    # an unpaired surrogate (NTFS names are unchecked UTF-16)
    "surrogate": {"/docs/Ünïcödé dir/日本語 ファイル.txt": "\ud800本語 ファイル.txt"},
    # a '/' in a name: the listing sorts the paths themselves
    "slash": {**ASCII, "/dangling-abs": "level00/aaaa", "/compressed": "level00-cm"},
}


def rename(image: Path, renames: dict[str, str]) -> None:
    """Give the records of paths new names of as many UTF-16 units in their $FILE_NAME (the
    directory indexes keep the old ones: only the full scan sees the new)."""
    vol = NtfsVolume(RawFileDevice(str(image)))
    records = {path: vol.stat(path).record for path in renames}
    for path, name in renames.items():
        number = records[path]
        rec = bytearray(vol.record(number))
        old = path.rpartition("/")[2].encode("utf-16-le")
        new = name.encode("utf-16-le", "surrogatepass")
        assert len(old) == len(new), name
        for at in attr_offsets(rec)[s.FILE_NAME]:
            value = at + int.from_bytes(rec[at + 20 : at + 22], "little") + s.FILE_NAME_SIZE
            if rec[value : value + len(old)] == old:
                rec[value : value + len(new)] = new
        write_record(image, vol.record_offset(number), bytes(rec))


@pytest.mark.parametrize("case", list(RENAMES))
def test_a_full_listing_is_in_path_order_whatever_the_names(case: str, tmp_path: Path) -> None:
    """A full NTFS listing's rows are sorted by path without the paths being made (``fs
    pathorder``), its paths made a batch at a time: rows in ``sorted`` order, text the lines
    of its rows (names escaped), JSON their ``json.dumps``."""
    image = small_volume(tmp_path)
    rename(image, RENAMES[case])
    table = ops.ls(str(image), "/", True, columns=True)["entries"]
    rows = table.rows()
    paths = [r["path"] for r in rows]
    assert paths == sorted(paths)
    renamed = {f"{p.rpartition('/')[0]}/{n}" for p, n in RENAMES[case].items()}
    assert renamed - set(paths) <= {"/docs/Ünïcödé dir/japanese.txt"}  # now below 'Unicode dir'
    listing = table.path.listing  # type: ignore[attr-defined]
    assert listing.plain == (case in ("ascii", "slash"))
    assert listing.paths == [listing.path(i) for i in range(len(listing))]
    assert ", ".join(table.json_items(batch=7)) == json.dumps(rows)[1:-1]
    shown = [{**r, "path": printable([r["path"]])[0]} for r in rows]
    assert "".join(table.lines()) == "".join(f"{line_before(r)}\n" for r in shown)
    assert_text_is_lines(table)


@given(
    st.lists(
        st.tuples(
            st.text(st.characters(codec="utf-16", exclude_characters="\n"), max_size=12)
            | st.text(st.characters(max_codepoint=0xA0), max_size=12)
            | st.text(SURROGATES | st.characters(max_codepoint=0x7F), max_size=12),
            st.integers(0, 2**62),
            st.sampled_from([0, 0x20, 0x6, 0x7FFFFFFF]),
            st.booleans(),
            st.none() | st.text(max_size=8),
        ),
        max_size=12,
    )
)
def test_text_is_lines_on_any_names(
    rows: list[tuple[str, int, int, bool, str | None]],
) -> None:
    """Names with controls, C1 characters, unpaired surrogates, non-ASCII and newlines in
    any batch, links, wide sizes and attribute sets."""
    table = Table(
        path=[f"/{name}" for name, *_ in rows],
        kind=Labels(np.array([d for *_, d, _t in rows], np.intp), ["file", "dir"]),
        size=np.array([size for _n, size, *_ in rows], np.int64),
        flags=np.array([flags for _n, _s, flags, *_ in rows], np.int64),
        names_of=lambda bits: [f"bit{b}" for b in range(32) if bits >> b & 1],
        filetimes=np.full((len(rows), 3), FILETIME_UNIX_OFFSET + 10**16, np.int64),
        sparse={i: {"target": t} for i, (*_, t) in enumerate(rows) if t is not None},
    )
    assert_text_is_lines(table)


def test_write_text_takes_bytes_only_into_utf8() -> None:
    table = Table(
        path=["/caf\u00e9", "/plain"],
        kind=["file", "dir"],
        size=[1, 0],
        flags=[0, 0],
        names_of=lambda bits: [],
        stamps=lambda k: [None, None],
    )
    expected = "".join(table.lines())
    for encoding in ("utf-8", "UTF8", "latin-1"):
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding=encoding)
        stream.write("# ")  # text already written goes first
        table.write_text(stream)
        stream.flush()
        assert raw.getvalue() == f"# {expected}".encode(encoding)
    into_str = io.StringIO()
    table.write_text(into_str)
    assert into_str.getvalue() == expected


def test_labels_hold_a_code_per_row() -> None:
    labels = Labels.of(["file", "dir", "file"])
    assert (labels.names, labels.codes.tolist()) == (["file", "dir"], [0, 1, 0])
    labels[2] = "symlink"
    labels[0] = "dir"
    assert labels.between() == ["dir", "dir", "symlink"] and labels[2] == "symlink"
    assert labels.between(1, 3) == ["dir", "symlink"] and len(labels) == 3


@pytest.mark.parametrize("recursive", [True, False])
@pytest.mark.parametrize("kind", ["ntfs", "fat"])
def test_json_items_are_json_dumps(kind: str, recursive: bool, fat_disk: Path) -> None:
    image = str(volume(40, "16M") if kind == "ntfs" else fat_disk)
    table = ops.ls(image, "/", recursive, columns=True)["entries"]
    rows = table.rows()
    assert ", ".join(table.json_items(batch=7)) == json.dumps(rows)[1:-1]
    if kind == "ntfs" and recursive:
        assert any("streams" in r for r in rows) and any("target" in r for r in rows)


def test_times_given_whole_are_made_once() -> None:
    """FAT gives each time column whole: batching the output must not remake it per batch."""
    calls: list[int] = []

    def stamps(k: int) -> list[str | None]:
        calls.append(k)
        return [f"2026-01-{i + 1:02d}T00:00:00" for i in range(10)]

    table = Table(
        path=[f"/f{i}" for i in range(10)],
        kind=["file"] * 10,
        size=list(range(10)),
        flags=[0] * 10,
        names_of=lambda bits: [],
        stamps=stamps,
    )
    assert ", ".join(table.json_items(batch=3)) == json.dumps(table.rows())[1:-1]
    assert "".join(table.lines(batch=3)) == "".join(f"{line_before(r)}\n" for r in table.rows())
    assert sorted(calls) == [0, 1, 2]


def test_control_characters_in_names_are_shown_escaped() -> None:
    """NTFS names may hold any character but NUL and '/' (ntfs-3g makes them): printed as
    they are, an escape sequence recoloured the terminal and a newline made a row of its own
    (a listing could show a file that is not there); an unpaired surrogate (NTFS names are
    unchecked UTF-16) could not be written at all (exit 70).  JSON carries the name as it is."""
    hostile = "/red\x1b[31mX\nfile 1 2026-01-01T00:00:00 - /Windows/evil.dll\x9b"
    table = Table(
        path=[hostile, "/plain"],
        kind=["file", "file"],
        size=[1, 2],
        flags=[0, 0],
        names_of=lambda bits: [],
        stamps=lambda k: [None, None],
        sparse={1: {"target": "/t\tab\udc80"}},
    )
    lines = "".join(table.lines()).splitlines()
    assert_text_is_lines(table)
    assert len(lines) == 2
    assert lines[0].endswith(
        "/red\\x1b[31mX\\x0afile 1 2026-01-01T00:00:00 - /Windows/evil.dll\\x9b"
    )
    assert lines[1].endswith("/plain -> /t\\x09ab\\udc80")
    assert json.loads("[" + ", ".join(table.json_items()) + "]")[0]["path"] == hostile


def test_layer_diff_text_escapes_names_as_fs_ls_does(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``layer diff`` prints the paths a packaging machine chose: the same escaping."""
    import strata.cli.layer as layer_cli
    from strata.cli.main import run

    hostile = "/App/red\x1b[31m\nadded    file   1 KiB  /Windows/evil.dll\udc80"
    entry = {"path": hostile, "change": "added", "type": "file", "size": 3}
    diff = {"layer": "app", "version": "1", "file_delta": True, "skipped": [],
            "volumes": [{"partition": 1, "filesystem": "ntfs", "entries": [entry]}]}  # fmt: skip
    monkeypatch.setattr(layer_cli, "layer_diff", lambda ref, store, registry: diff)
    assert run(["layer", "diff", "app:1", "--store", "unused"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [
        "partition 1: 1 entries",
        "  added     file         3 B  "
        "/App/red\\x1b[31m\\x0aadded    file   1 KiB  /Windows/evil.dll\\udc80",
    ]
