"""File-delta tables: streaming FastCDC gives the one-shot cuts; manifests round-trip through
their canonical bytes; entries pointing past their tables are refused with CorruptImage."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.errors import CorruptImage
from strata.layer import filedelta as fd
from strata.native import fastcdc_cuts
from strata.store import CHUNK_ROW, Manifest
from strata.store.manifest import parse


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2_000_000), st.integers(1, 300_000), st.integers(0, 2**32 - 1))
def test_streamed_cuts_equal_one_call(size: int, window: int, seed: int) -> None:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    pieces = iter([data[i : i + window] for i in range(0, len(data), window)])
    streamed = [(at, bytes(c)) for at, c in fd.cdc_chunks(pieces)]
    ends = fastcdc_cuts(data, fd.CDC_MIN, fd.CDC_AVG, fd.CDC_MAX, final=True) if data else []
    starts = [0, *ends[:-1]] if ends else []
    assert [at for at, _ in streamed] == starts
    assert b"".join(c for _, c in streamed) == data


def test_small_pieces_are_scanned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fragmented file comes a run (a cluster) at a time: the cutter must not rescan the
    carried tail for every piece (it scanned 32 MiB given in 512-byte pieces ~250 times)."""
    data = np.random.default_rng(4).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    scanned: list[int] = []

    def counting(buf: bytes, *args: object, **kwargs: object) -> list[int]:
        scanned.append(len(buf))
        return fastcdc_cuts(buf, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fd, "fastcdc_cuts", counting)
    pieces = iter([data[i : i + 512] for i in range(0, len(data), 512)])
    cut = [(at, bytes(c)) for at, c in fd.cdc_chunks(pieces)]
    assert b"".join(c for _, c in cut) == data
    ends = fastcdc_cuts(data, fd.CDC_MIN, fd.CDC_AVG, fd.CDC_MAX, final=True)
    assert [at for at, _ in cut] == [0, *ends[:-1]]
    assert sum(scanned) < 2 * len(data), sum(scanned) / len(data)


def _delta() -> fd.FileDelta:
    entries = np.zeros(2, fd.FILE_ENTRY_ROW)
    names = "/Apps/ä.txt/Apps".encode()
    entries["partition"] = 1
    entries["change"] = [fd.ADDED, fd.DELETED]
    entries["kind"] = [fd.FILE, fd.DIRECTORY]
    entries["name_offset"], entries["name_length"] = [0, 12], [12, 5]
    entries["size"] = [10, 0]
    entries["chunk_count"] = [1, 0]
    entries["flags"] = [fd.HAS_CONTENT, 0]
    chunks = np.zeros(1, CHUNK_ROW)
    chunks["length"] = 10
    return fd.FileDelta([fd.Volume(1, 1 << 20, 64 << 20)], entries, chunks, names)


def test_manifest_round_trip() -> None:
    manifest = Manifest("layer-version", {})
    _delta().add_to(manifest)
    back = fd.load(parse(manifest.to_bytes()))
    assert back is not None
    assert [back.path(i) for i in range(2)] == ["/Apps/ä.txt", "/Apps"]
    assert back.listing() == [
        {
            "partition": 1,
            "entries": [
                {"path": "/Apps/ä.txt", "change": "added", "type": "file", "size": 10},
                {"path": "/Apps", "change": "deleted", "type": "dir", "size": 0},
            ],
        }
    ]
    assert back.summary()["added"] == 1 and back.summary()["deleted"] == 1


@pytest.mark.parametrize("field, value", [("name_length", 99), ("chunk_count", 5)])
def test_entries_pointing_past_their_tables_are_refused(field: str, value: int) -> None:
    delta = _delta()
    delta.entries[field][0] = value
    manifest = Manifest("layer-version", {})
    delta.add_to(manifest)
    with pytest.raises(CorruptImage, match="points past"):
        fd.load(parse(manifest.to_bytes()))


def test_a_manifest_without_a_file_delta_has_none() -> None:
    assert fd.load(Manifest("layer-version", {})) is None


def _stored(delta: fd.FileDelta, meta: dict | None = None) -> Manifest:
    manifest = Manifest("layer-version", {"layer": "app", "version": "1", **(meta or {})})
    delta.add_to(manifest)
    return parse(manifest.to_bytes())


def _renamed(first: str) -> fd.FileDelta:
    """``_delta`` with its first entry's path replaced (the second keeps ``/Apps``)."""
    delta = _delta()
    encoded = first.encode("utf-8", "surrogatepass")
    delta.names = encoded + b"/Apps"
    delta.entries["name_offset"] = [0, len(encoded)]
    delta.entries["name_length"] = [len(encoded), 5]
    return delta


@pytest.mark.parametrize(
    "path, words",
    [
        ("/Apps/../../etc/passwd", "'..'"),
        ("/Apps/./x", "'.'"),
        ("Apps/x", "start with '/'"),
        ("/Apps//x", "empty"),
        ("/", "empty"),
        ("/a\0b", "NUL"),
        ("/Apps/a:b", "FAT names cannot hold"),
        ("/Apps/a\\b", "FAT names cannot hold"),
        ("/Apps/" + "x" * 256, "255"),
        ("/APPS", "also row"),
    ],
)
def test_stored_paths_no_volume_can_hold_are_refused(path: str, words: str) -> None:
    with pytest.raises(CorruptImage, match="layer app:1") as err:
        fd.load(_stored(_renamed(path)))
    assert words in err.value.problem and err.value.field == "file-names"


def test_a_stored_path_that_is_not_utf8_is_refused() -> None:
    delta = _renamed("/Apps/ab.txt")
    delta.names = b"/Apps/\xff\xfe.txt/Apps"
    with pytest.raises(CorruptImage, match="not UTF-8") as err:
        fd.load(_stored(delta))
    assert err.value.field == "files.name_offset"


def test_ntfs_paths_keep_what_ntfs_names_hold() -> None:
    """NTFS names may hold ``\\`` and ``:`` (POSIX namespace) and differ only in case."""
    delta = _renamed("/apps/a\\b:c")
    delta.volumes = [fd.Volume(1, 1 << 20, 64 << 20, "ntfs")]
    back = fd.load(_stored(delta))
    assert back is not None and [back.path(0), back.path(1)] == ["/apps/a\\b:c", "/Apps"]


@pytest.mark.parametrize(
    "field, value, words, where",
    [
        ("change", 9, "unknown change", "files.change"),
        ("kind", 7, "unknown kind", "files.kind"),
        ("flags", 0x80, "unknown flags", "files.flags"),
        ("partition", 5, "volume the delta lacks", "files.partition"),
        ("name_offset", 2**64 - 1, "points past", "files.name_offset"),
        ("first_chunk", 2**64 - 1, "points past", "files.first_chunk"),
        ("created", 2**62, "no date", "files.created"),
        ("modified", -(2**62), "no date", "files.modified"),
        ("size", 11, "hold 10 bytes", "files.size"),
    ],
)
def test_stored_rows_out_of_range_are_refused(
    field: str, value: int, words: str, where: str
) -> None:
    delta = _delta()
    delta.entries[field][0] = value
    with pytest.raises(CorruptImage, match="layer app:1") as err:
        fd.load(_stored(delta))
    assert words in err.value.problem and err.value.field == where


def test_content_on_a_deleted_entry_and_gaps_between_chunks_are_refused() -> None:
    delta = _delta()
    delta.entries["flags"][1] = fd.HAS_CONTENT
    with pytest.raises(CorruptImage, match="deleted entry"):
        fd.load(_stored(delta))
    delta = _delta()
    delta.chunks = np.zeros(2, CHUNK_ROW)
    delta.chunks["offset"], delta.chunks["length"] = [0, 6], [5, 5]
    delta.entries["chunk_count"][0] = 2
    with pytest.raises(CorruptImage, match="offset 6, not 5") as err:
        fd.load(_stored(delta))
    assert err.value.field == "file-chunks.offset"


@pytest.mark.parametrize(
    "volumes",
    [
        "not a list",
        [{"partition": "1", "start": 0, "length": 1}],
        [{"partition": 1, "start": -1, "length": 1}],
        [{"partition": 1, "start": 0, "length": 1, "fs": "ext4"}],
        [{"partition": 1, "start": 0, "length": 1}, {"partition": 1, "start": 9, "length": 1}],
    ],
)
def test_stored_volume_lists_that_are_not_volumes_are_refused(volumes: object) -> None:
    manifest = _stored(_delta())
    manifest.meta["file_delta"]["volumes"] = volumes
    with pytest.raises(CorruptImage, match="layer app:1") as err:
        fd.load(manifest)
    assert err.value.field == "meta.file_delta.volumes"


def test_tables_of_another_schema_or_missing_are_refused() -> None:
    manifest = _stored(_delta())
    _, rows = manifest.tables["file-chunks"]
    manifest.tables["files"] = ("chunks-v1", rows)
    with pytest.raises(CorruptImage, match="table 'files' has schema 'chunks-v1'"):
        fd.load(manifest)
    manifest = _stored(_delta())
    del manifest.tables["file-names"]
    with pytest.raises(CorruptImage, match="no table 'file-names'"):
        fd.load(manifest)


def test_fuzzed_file_delta_tables_load_or_are_refused() -> None:
    """Mutated rows and names of a stored file delta (the manifest's own checks pass): the
    loader gives a delta whose every path, listing and content rows are usable, or a
    CorruptImage; never another exception."""
    rng = np.random.default_rng(11)
    delta = _delta()
    delta.chunks = np.zeros(2, CHUNK_ROW)
    delta.chunks["offset"], delta.chunks["length"] = [0, 4], [4, 6]
    delta.entries["chunk_count"][0] = 2
    raw = bytearray(_stored(delta).to_bytes())
    tables = len(raw) - (len(delta.names) + 2 * 26 + 2 * fd.FILE_ENTRY_ROW.itemsize)
    outcomes = {"loaded": 0, "refused": 0}
    started = time.perf_counter()
    for _ in range(3000):
        buf = bytearray(raw)
        for pos in rng.integers(tables, len(raw), int(rng.integers(1, 4))):
            buf[int(pos)] = int(rng.integers(0, 256))
        manifest = parse(bytes(buf))
        try:
            back = fd.load(manifest)
        except CorruptImage:
            outcomes["refused"] += 1
            continue
        assert back is not None
        back.listing()
        back.summary()
        for row in range(len(back.entries)):
            assert fd.path_problem(back.path(row), fat=True) is None
            if back.entries[row]["flags"] & fd.HAS_CONTENT:
                got = int(back.chunk_rows(row)["length"].sum())
                assert got == int(back.entries[row]["size"])
        outcomes["loaded"] += 1
    assert time.perf_counter() - started < 20
    assert outcomes["loaded"] > 100 and outcomes["refused"] > 1000, outcomes


_TEXT = st.text(alphabet="/. aA:\x01é\U0001f600", max_size=12)
_PATH = st.one_of(
    _TEXT,
    _TEXT.map(lambda s: "/" + s),
    st.builds(lambda c, n: "/x/" + c * n, st.sampled_from("aé\U0001f600"), st.integers(100, 260)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PATH, min_size=1, max_size=4), st.sampled_from(["fat", "ntfs"]))
def test_the_path_scan_refuses_exactly_what_path_problem_refuses(paths: list[str], fs: str) -> None:
    """``load`` scans the joined paths and parses only the rows it flags: it must refuse a
    delta exactly when one path has a ``path_problem`` (or two share a path)."""
    fat = fs == "fat"
    encoded = [p.encode() for p in paths]
    entries = np.zeros(len(paths), fd.FILE_ENTRY_ROW)
    entries["partition"], entries["change"], entries["kind"] = 1, fd.ADDED, fd.DIRECTORY
    lengths = np.array([len(p) for p in encoded])
    entries["name_offset"], entries["name_length"] = np.cumsum(lengths) - lengths, lengths
    delta = fd.FileDelta(
        [fd.Volume(1, 0, 1 << 20, fs)], entries, np.zeros(0, CHUNK_ROW), b"".join(encoded)
    )
    keys = [p.upper() if fat else p for p in paths]
    valid = all(fd.path_problem(p, fat) is None for p in paths) and len(set(keys)) == len(keys)
    if valid:
        assert fd.load(_stored(delta)) is not None
    else:
        with pytest.raises(CorruptImage):
            fd.load(_stored(delta))
