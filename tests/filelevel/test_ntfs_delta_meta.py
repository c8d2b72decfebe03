"""Issue 9, NTFS metadata bytes: the file delta of a volume ntfs-3g edited carries each changed
entry's security descriptor, whole reparse value and named streams' content in the store; what
the store gives back equals what ntfs-3g reports for the child (getfattr on a read-only mount:
system.ntfs_acl, system.ntfs_reparse_data, user.<stream>).  Hostile records (a security id
$Secure does not hold, a stream whose runs leave the volume) give a named warning, not a crash.
"""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

from strata.blockdev.rawfile import RawFileDevice
from strata.cli.finalize import file_delta_notes
from strata.errors import StrataError
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import structs as s
from strata.layer import filedelta as fd
from strata.layer import ntfsdelta
from strata.partition import open_partition
from strata.store import Manifest, Store
from strata.store.manifest import parse

from support.filelevel_tools import extract
from support.integrity_tools import PART_SIZE, PART_START, can_mount
from support.ntfs_delta_tools import base_and_child, changed_blocks
from support.tools import require, run

pytestmark = pytest.mark.skipif(not can_mount(), reason="ntfs-3g FUSE mounts need root")
SMALL = b"a small named stream\n"
BIG = os.urandom(60_000)  # non-resident, above FastCDC's minimum (xattr values stop at 64 KiB)
NOTE = b"stream added to a file the base had\n"
SYMLINK, JUNCTION = 0xA000000C, 0xA0000003
PATHS = (
    "Data/ads.txt",
    "Data/link",
    "Data/junction",
    "Data/acl.txt",
    "Data/keep.txt",
    "Data/restream.txt",
)


def _reparse(tag: int, body: bytes) -> bytes:
    return struct.pack("<IHH", tag, len(body), 0) + body


def _symlink(target: str) -> bytes:
    """A relative symlink's reparse value ([MS-FSCC] 2.1.2.4)."""
    t = target.encode("utf-16-le")
    return _reparse(SYMLINK, struct.pack("<HHHHI", 0, len(t), len(t), len(t), 1) + t + t)


def _junction(target: str) -> bytes:
    """A mount point's reparse value ([MS-FSCC] 2.1.2.5), NUL-terminated names."""
    sub, shown = f"\\??\\{target}".encode("utf-16-le"), target.encode("utf-16-le")
    head = struct.pack("<HHHH", 0, len(sub), len(sub) + 2, len(shown))
    return _reparse(JUNCTION, head + sub + b"\0\0" + shown + b"\0\0")


def _altered(sd: bytes) -> bytes:
    """``sd`` with its DACL's first ACE granting one right less (or more): still valid."""
    dacl = int.from_bytes(sd[16:20], "little")
    assert dacl and int.from_bytes(sd[dacl + 4 : dacl + 6], "little") > 0
    mask = dacl + 8 + 4
    value = int.from_bytes(sd[mask : mask + 4], "little") ^ 0x00010000  # DELETE
    return sd[:mask] + value.to_bytes(4, "little") + sd[mask + 4 :]


def _fill(root: Path) -> None:
    data = root / "Data"
    data.mkdir()
    (data / "acl.txt").write_bytes(b"its ACL changes\n")
    (data / "keep.txt").write_bytes(b"gets a stream\n")
    (data / "restream.txt").write_bytes(b"its stream is rewritten, same size\n")
    os.setxattr(data / "restream.txt", "user.same", b"A" * 100)
    for i in range(50):
        (data / f"filler{i:02d}.txt").write_bytes(b"filler %d\n" % i)


def _change(root: Path) -> None:
    data = root / "Data"
    ads = data / "ads.txt"
    ads.write_bytes(b"main stream\n")
    os.setxattr(ads, "user.small", SMALL)
    os.setxattr(ads, "user.big", BIG)
    os.setxattr(data / "keep.txt", "user.note", NOTE)
    os.setxattr(data / "restream.txt", "user.same", b"B" * 100)
    (data / "link").write_bytes(b"")
    os.setxattr(data / "link", "system.ntfs_reparse_data", _symlink("ads.txt"))
    (data / "junction").mkdir()
    os.setxattr(data / "junction", "system.ntfs_reparse_data", _junction("C:\\Data"))
    acl = data / "acl.txt"
    os.setxattr(acl, "system.ntfs_acl", _altered(os.getxattr(acl, "system.ntfs_acl")))


def _getfattr(path: Path, name: str) -> bytes:
    got = subprocess.run(
        [require("getfattr"), "-h", "-n", name, "--only-values", str(path)],
        capture_output=True,
        check=True,
    )
    return got.stdout


def _oracle(raw: Path, work: Path) -> dict[str, dict[str, bytes]]:
    """What ntfs-3g reports for PATHS on a read-only mount of ``raw``'s partition 1."""
    vol = extract(raw, PART_START, PART_SIZE, work / "meta-oracle.vol")
    out: dict[str, dict[str, bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="ntfs-meta-") as mnt:
        run([require("ntfs-3g"), "-o", "ro", vol, mnt])
        try:
            for rel in PATHS:
                p = Path(mnt) / rel
                if not os.path.lexists(p):
                    continue
                facts = {"acl": _getfattr(p, "system.ntfs_acl")}
                if rel in ("Data/link", "Data/junction"):
                    facts["reparse"] = _getfattr(p, "system.ntfs_reparse_data")
                else:
                    names = os.listxattr(p)
                    for n in names:
                        if n.startswith("user."):
                            facts[n] = _getfattr(p, n)
                out["/" + rel] = facts
        finally:
            run(["umount", mnt])
    vol.unlink()
    return out


def _capture(root: Path, base: Path, child: Path, name: str) -> tuple[Store, fd.FileDelta]:
    store = Store.init(root / name)
    offsets = changed_blocks(base, child)
    with RawFileDevice(str(child)) as new, RawFileDevice(str(base)) as old:
        delta = fd.capture(store, new, old, offsets)
    assert delta is not None and not delta.skipped
    store.flush()
    return store, delta


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require("getfattr")
    root = tmp_path_factory.mktemp("ntfsmeta")
    base, child = base_and_child(root, _fill, _change)
    store, delta = _capture(root, base, child, "store")
    yield {
        "root": root,
        "base": base,
        "child": child,
        "store": store,
        "delta": delta,
        "oracle": _oracle(child, root),
        "base_oracle": _oracle(base, root),
    }
    store.close()


def _row(delta: fd.FileDelta, path: str) -> int:
    return next(i for i in range(len(delta.entries)) if delta.path(i) == path)


def _bytes(store: Store, chunks: np.ndarray) -> bytes:
    return b"".join(fd.read_content(store, chunks))


def test_entries_and_no_warnings(world: dict[str, Any]) -> None:
    delta = world["delta"]
    got = {
        delta.path(i): fd.CHANGE_NAMES[int(delta.entries[i]["change"])]
        for i in range(len(delta.entries))
    }
    for rel in PATHS:
        assert got["/" + rel] in ("added", "modified"), rel
    assert got["/Data/acl.txt"] == got["/Data/keep.txt"] == got["/Data/restream.txt"] == "modified"
    assert delta.warnings == []


@pytest.mark.parametrize("path", ["/" + p for p in PATHS])
def test_security_descriptor_is_what_ntfs3g_reports(world: dict[str, Any], path: str) -> None:
    delta, store = world["delta"], world["store"]
    blob = delta.blob(_row(delta, path), "security")
    assert len(blob) == 1
    assert _bytes(store, blob) == world["oracle"][path]["acl"]


def test_changed_acl_is_the_new_one(world: dict[str, Any]) -> None:
    """The oracle differs between base and child, and the delta holds the child's."""
    old = world["base_oracle"]["/Data/acl.txt"]["acl"]
    new = world["oracle"]["/Data/acl.txt"]["acl"]
    assert old != new and _altered(old) == new
    delta = world["delta"]
    assert _bytes(world["store"], delta.blob(_row(delta, "/Data/acl.txt"), "security")) == new


@pytest.mark.parametrize("path,tag", [("/Data/link", SYMLINK), ("/Data/junction", JUNCTION)])
def test_reparse_value_is_what_ntfs3g_reports(world: dict[str, Any], path: str, tag: int) -> None:
    delta, store = world["delta"], world["store"]
    row = _row(delta, path)
    facts = delta.ntfs_row(row)
    assert facts is not None and int(facts["reparse_tag"]) == tag
    value = _bytes(store, delta.blob(row, "reparse"))
    assert value == world["oracle"][path]["reparse"]
    assert int.from_bytes(value[:4], "little") == tag
    assert (delta.entries[row]["kind"] == fd.DIRECTORY) == (path == "/Data/junction")
    assert len(delta.blob(_row(delta, "/Data/ads.txt"), "reparse")) == 0


@pytest.mark.parametrize("path", ["/Data/ads.txt", "/Data/keep.txt", "/Data/restream.txt"])
def test_named_streams_are_what_ntfs3g_reads(world: dict[str, Any], path: str) -> None:
    delta, store = world["delta"], world["store"]
    oracle = {k[5:]: v for k, v in world["oracle"][path].items() if k.startswith("user.")}
    streams = delta.stream_rows(_row(delta, path))
    assert {name for name, _ in streams} == set(oracle) and oracle
    for name, st in streams:
        data = _bytes(store, delta.stream_chunks(st))
        assert st["flags"] & fd.HAS_CONTENT and data == oracle[name], name
        assert int(st["size"]) == len(data)
        assert bytes(st["digest"]) == xxhash.xxh3_128_digest(data)
    if path == "/Data/ads.txt":
        assert oracle["big"] == BIG and oracle["small"] == SMALL
    if path == "/Data/restream.txt":
        assert oracle["same"] == b"B" * 100


def test_manifest_round_trip_and_v1_rows(world: dict[str, Any]) -> None:
    """The tables survive a manifest; one written with v1 NTFS rows loads as carrying none."""
    delta = world["delta"]
    m = Manifest(kind="layer-version")
    delta.add_to(m)
    back = fd.load(parse(m.to_bytes()))
    assert back is not None
    for table in ("entries", "chunks", "ntfs", "streams", "blobs"):
        assert np.array_equal(getattr(back, table), getattr(delta, table)), table
    assert set(delta.blobs["id"].tolist()) <= set(m.chunk_ids().tolist())  # gc keeps them
    old = Manifest(kind="layer-version")
    delta.add_to(old)
    v1 = np.zeros(len(delta.ntfs), fd.NTFS_ENTRY_V1)
    for name in fd.NTFS_ENTRY_V1.names or ():
        v1[name] = delta.ntfs[name]
    s1 = np.zeros(len(delta.streams), fd.STREAM_V1)
    for name in fd.STREAM_V1.names or ():
        s1[name] = delta.streams[name]
    old.tables.pop("file-ntfs-blobs")
    old.add_table("file-ntfs", "ntfs-entry-v1", v1)
    old.add_table("file-streams", "file-stream-v1", s1)
    legacy = fd.load(parse(old.to_bytes()))
    assert legacy is not None
    row = _row(legacy, "/Data/ads.txt")
    assert legacy.stream_names(row) == delta.stream_names(row)
    assert len(legacy.blob(row, "security")) == 0
    assert all(st["chunk_count"] == 0 for _, st in legacy.stream_rows(row))


def _attr_at(vol: NtfsVolume, record: int, atype: int, name: str = "") -> tuple[int, Any]:
    """Volume offset of an attribute of ``record`` (in its base record) and the attribute."""
    a = next(a for a in vol.attributes(record) if a.type == atype and a.name == name)
    assert a.record == record
    return vol.record_offset(record) + a.offset, a


def _patch(raw: Path, at: int, data: bytes, record_start: int, record_size: int) -> None:
    """Write ``data`` at disk offset ``at``, never over a sector's update-sequence bytes."""
    for k in range(len(data)):
        assert (at + k - record_start) % 512 not in (510, 511)
    assert at + len(data) <= record_start + record_size
    with open(raw, "r+b") as f:
        f.seek(at)
        f.write(data)


def _record(vol: NtfsVolume, path: str) -> int:
    listing = vol.scan()
    return int(listing.owner[listing.paths.index(path)])


def test_hostile_security_id_and_stream_runs(world: dict[str, Any]) -> None:
    """acl.txt's security id set to one $SDS does not hold, ads.txt's big stream's run moved
    past the volume: both are named warnings; everything else is still carried."""
    root = world["root"]
    bad = root / "hostile.raw"
    shutil.copyfile(world["child"], bad)
    with RawFileDevice(str(bad)) as dev:
        vol = NtfsVolume(open_partition(dev, 1))
        rs = vol.geometry.record_size
        acl, ads = _record(vol, "/Data/acl.txt"), _record(vol, "/Data/ads.txt")
        si_at, si = _attr_at(vol, acl, s.STANDARD_INFORMATION)
        raw_rec = vol.record(acl)
        voff = int.from_bytes(raw_rec[si.offset + 20 : si.offset + 22], "little")
        acl_start = PART_START + vol.record_offset(acl)
        big_at, big = _attr_at(vol, ads, s.DATA, "big")
        assert big.non_resident
        ads_rec = vol.record(ads)
        runs_at = int.from_bytes(ads_rec[big.offset + 32 : big.offset + 34], "little")
        head = ads_rec[big.offset + runs_at]
        lsz, osz = head & 0xF, head >> 4
        ads_start = PART_START + vol.record_offset(ads)
    _patch(bad, PART_START + si_at + voff + 0x34, (0x7FFF0).to_bytes(4, "little"), acl_start, rs)
    lcn_at = PART_START + big_at + runs_at + 1 + lsz
    _patch(bad, lcn_at, b"\xff" * (osz - 1) + b"\x7f", ads_start, rs)
    store, delta = _capture(root, world["base"], bad, "hostile-store")
    problems = {(w["path"], w["problem"]) for w in delta.warnings}
    assert any(p == "/Data/acl.txt" and "security id 524272" in m for p, m in problems), problems
    assert any(p == "/Data/ads.txt" and "stream 'big'" in m for p, m in problems), problems
    assert len(delta.blob(_row(delta, "/Data/acl.txt"), "security")) == 0
    streams = dict(delta.stream_rows(_row(delta, "/Data/ads.txt")))
    assert not streams["big"]["flags"] & fd.HAS_CONTENT
    assert _bytes(store, delta.stream_chunks(streams["small"])) == SMALL
    ads_sd = delta.blob(_row(delta, "/Data/ads.txt"), "security")
    assert _bytes(store, ads_sd) == world["oracle"]["/Data/ads.txt"]["acl"]
    m = Manifest(kind="layer-version")
    delta.add_to(m)
    assert m.meta["file_delta"]["warnings"] == delta.warnings
    notes = file_delta_notes(delta.summary())  # what finalize and layer diff print
    assert f"partition 1: /Data/acl.txt (MFT record {acl}): security id 524272" in "\n".join(notes)
    assert len(notes) == len(delta.warnings)
    store.close()


def test_notes_from_a_stored_manifest_trust_no_field() -> None:
    """``layer diff`` reads the notes back from a manifest: a field missing, a partition that
    is no number and a control character in a path are printed, not a traceback or an escape
    sequence on the terminal."""
    notes = file_delta_notes(
        {
            "skipped": [{"partition": "x", "reason": "bad\x1b[31m"}],
            "warnings": [{"partition": 1, "path": "/a\nb"}, {}],
        }
    )
    assert notes == [
        "volume 'x': no file delta: bad\\x1b[31m",
        "partition 1: /a\\x0ab (MFT record None): None",
        "volume None: None (MFT record None): None",
    ]


FUZZ_ROUNDS = 1000  # per record; two records: 2000 mutations


@pytest.mark.parametrize("path", ["/Data/ads.txt", "/Data/link"])
def test_fuzzed_records_give_only_strata_errors(world: dict[str, Any], path: str) -> None:
    """Random bytes of a changed record (its update-sequence bytes kept, so the record still
    fixes up and the attribute parsers see the damage): the row scan, the sliced values and
    the per-record extras (and the first MiB of each named stream) raise only StrataError."""
    root = world["root"]
    work = root / f"fuzz{path.replace('/', '_')}.raw"
    shutil.copyfile(world["child"], work)
    with RawFileDevice(str(work)) as dev:
        vol = NtfsVolume(open_partition(dev, 1))
        rec = _record(vol, path)
        rs = vol.geometry.record_size
        at = PART_START + vol.record_offset(rec)
    pristine = work.read_bytes()[at : at + rs]
    free = np.array([k for k in range(48, rs) if k % 512 not in (510, 511)])
    rng = np.random.default_rng(9)
    outcomes: dict[str, int] = {}
    with open(work, "r+b") as f:
        for _ in range(FUZZ_ROUNDS):
            buf = bytearray(pristine)
            for k in rng.choice(free, int(rng.integers(1, 9)), replace=False).tolist():
                buf[k] = int(rng.integers(0, 256))
            os.pwrite(f.fileno(), bytes(buf), at)
            with RawFileDevice(str(work)) as dev:
                outcome = _exercise(NtfsVolume(open_partition(dev, 1)), rec)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("ok", 0) > 0 and len(outcomes) > 1, outcomes


def _exercise(vol: NtfsVolume, rec: int) -> str:
    try:
        recs = ntfsdelta.Records(vol)
        recs.load(np.array([rec]))
        extras = ntfsdelta.record_extras(vol, rec)
        for extents in extras.streams.values():
            for _ in itertools.islice(vol.iter_attribute(extents, 64 << 10), 16):
                pass
    except StrataError as e:
        return type(e).__name__
    return "ok"
