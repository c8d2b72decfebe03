"""``fs.ntfs.editor`` (libntfs-3g in process, ``strata._ntfs``) on volumes made by mkntfs; what
it wrote is read back by ntfs-3g (a FUSE mount), sleuthkit and strata's own reader."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from strata.blockdev.base import BaseDevice
from strata.blockdev.rawfile import RawFileDevice
from strata.errors import CorruptImage, InvalidInput, StateError
from strata.fs.ntfs import editor as ntfs_editor
from strata.fs.ntfs import open_ntfs
from strata.fs.ntfs.editor import ROOT, NtfsEditor, Times

from support.ntfs_tools import fls, icat, junction, mounted, security_descriptor
from support.tools import require

pytestmark = pytest.mark.skipif(
    not ntfs_editor.available(), reason="strata._ntfs is not built (needs ntfs-3g-dev)"
)
FT_2020 = 132_223_104_000_000_000  # 2020-01-01 as a FILETIME
needs_mount = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="ntfs-3g FUSE mounts need root"
)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    path = tmp_path / "v.img"
    subprocess.run(["truncate", "-s", "32M", path], check=True)
    subprocess.run([require("mkntfs"), "-F", "-Q", "-q", path], check=True, capture_output=True)
    return path


def _edit(path: Path) -> NtfsEditor:
    return NtfsEditor(RawFileDevice(str(path), writable=True))


def test_files_directories_links_and_streams(volume: Path) -> None:
    data = os.urandom(200_000)
    with _edit(volume) as ed:
        f = ed.create_file("/Program Files/App/bin/app.exe")  # parents made
        assert ed.write(f, [data[:70_000], memoryview(data)[70_000:]]) == len(data)
        ed.write(f, [b"[ZoneTransfer]\r\nZoneId=3\r\n"], stream="Zone.Identifier")
        ed.link(f, "/app-link.exe")
        g = ed.create_file("/short.txt")
        ed.write(g, [b"first, longer content"])
        ed.write(g, [b"second"])  # cuts what was past it
        assert ed.resolve("/program files/APP/bin/app.exe") == f  # Win32 names: any case
        assert ed.resolve("/Program Files/none") is None
        assert ed.is_dir(ed.resolve("/Program Files/App"))  # type: ignore[arg-type]
    rows = {r.path: r for r in fls(volume)}
    assert rows["Program Files/App/bin/app.exe"].size == len(data)
    assert icat(volume, rows["Program Files/App/bin/app.exe"].inode) == data
    assert icat(volume, rows["app-link.exe"].inode) == data
    assert rows["app-link.exe"].record == rows["Program Files/App/bin/app.exe"].record
    assert icat(volume, rows["Program Files/App/bin/app.exe:Zone.Identifier"].inode).startswith(
        b"[ZoneTransfer]"
    )
    assert icat(volume, rows["short.txt"].inode) == b"second"
    strata_view = open_ntfs(RawFileDevice(str(volume)))
    assert strata_view.read_file("/app-link.exe") == data


def test_names_match_whatever_their_case(volume: Path) -> None:
    """libntfs-3g makes POSIX names, which it matches only as spelled; Windows, and so the
    merge, match them whatever their case."""
    with _edit(volume) as ed:
        f = ed.create_file("/Dir/Mixed Case.txt")
        assert ed.resolve("/DIR/mixed CASE.TXT") == f
        with pytest.raises(InvalidInput, match="exists already"):
            ed.create_file("/dir/MIXED case.txt")
        assert ed.mkdir("/dir") == ed.resolve("/Dir")
        assert ed.delete("/dIR/mixed case.TXT") is True
        assert ed.resolve("/Dir/Mixed Case.txt") is None
        g = ed.create_file("/dir/mixed case.txt")  # free again, in the new spelling
        assert ed.children(ed.resolve("/Dir")) == [("mixed case.txt", g, False)]  # type: ignore[arg-type]
    assert {r.path for r in fls(volume) if r.path.startswith("Dir/")} == {"Dir/mixed case.txt"}


def test_delete_takes_the_subtree(volume: Path) -> None:
    with _edit(volume) as ed:
        for name in ("a", "b/c", "b/d/e"):
            ed.write(ed.create_file(f"/Data/tree/{name}.txt"), [name.encode()])
        ed.write(ed.create_file("/Data/keep.txt"), [b"keep"])
        assert ed.delete("/Data/tree") is True
        assert ed.delete("/Data/tree") is False
        assert ed.resolve("/Data/tree/a.txt") is None
        with pytest.raises(InvalidInput, match="root"):
            ed.delete("/")
    paths = {r.path for r in fls(volume)}
    assert "Data/keep.txt" in paths and not any(p.startswith("Data/tree") for p in paths)


@needs_mount
def test_metadata_is_what_ntfs3g_reads(volume: Path) -> None:
    descriptor = security_descriptor(read_only=True)
    with _edit(volume) as ed:
        f = ed.create_file("/meta.txt")
        ed.write(f, [b"x"])
        ed.set_security(f, descriptor)
        ed.set_attributes(f, 0x21)  # read-only, archive
        ed.set_times(f, Times(FT_2020, FT_2020 + 10_000_000, FT_2020 + 20_000_000))
        d = ed.mkdir("/junction")
        value = junction("C:\\Windows")
        ed.set_reparse(d, value)
    with mounted(volume, streams="xattr") as mnt:
        meta = mnt / "meta.txt"
        assert os.getxattr(meta, "system.ntfs_acl") == descriptor
        assert os.getxattr(meta, "system.ntfs_attrib_be") == struct.pack(">I", 0x21)
        times = struct.unpack("<4q", os.getxattr(meta, "system.ntfs_times"))
        assert times[:3] == (FT_2020, FT_2020 + 10_000_000, FT_2020 + 20_000_000)
        link = mnt / "junction"
        assert os.getxattr(link, "system.ntfs_reparse_data", follow_symlinks=False) == value


def test_refusals_name_the_path(volume: Path) -> None:
    with _edit(volume) as ed:
        ed.write(ed.create_file("/d/f.txt"), [b"f"])
        with pytest.raises(InvalidInput, match="exists already"):
            ed.create_file("/d/f.txt")
        with pytest.raises(InvalidInput, match="is a file"):
            ed.mkdir("/d/f.txt/below")
        with pytest.raises(InvalidInput, match="no NTFS name"):
            ed.resolve("/d/../f.txt")
        with pytest.raises(InvalidInput, match="no NTFS name"):
            ed.create_file("/" + "n" * 256)
        with pytest.raises(InvalidInput, match="set the reparse point: the value is not valid"):
            ed.set_reparse(ed.resolve("/d/f.txt"), junction("C:\\x"))  # type: ignore[arg-type]
    volume_binding = ntfs_editor._binding()
    dev = RawFileDevice(str(volume), writable=True)
    vol = volume_binding.Volume(dev)
    vol.close()
    with pytest.raises(ValueError, match="closed"):
        vol.lookup(ROOT, b"d\0")
    with pytest.raises(ValueError, match="UTF-16LE"):
        volume_binding.Volume(dev).lookup(ROOT, b"odd")


def test_a_full_volume_says_so(volume: Path) -> None:
    with _edit(volume) as ed:
        f = ed.create_file("/big.bin")
        with pytest.raises(StateError, match="no room left"):
            ed.write(f, (bytes(1 << 20) for _ in range(64)), path="/big.bin")


def test_a_hibernated_volume_is_refused_as_ntfs3g_refuses_it(volume: Path) -> None:
    with _edit(volume) as ed:  # what hibernation leaves in the root
        ed.write(ed.create_file("/hiberfil.sys"), [b"HIBR" + bytes(8188)])
    with pytest.raises(StateError, match=r"hibernated.*shut it down fully"):
        _edit(volume)


def test_what_is_no_ntfs_volume_is_refused(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(4 << 20))
    with pytest.raises(CorruptImage, match="libntfs-3g cannot mount it"):
        NtfsEditor(RawFileDevice(str(blank), writable=True))


class _Failing(BaseDevice):
    """A volume whose reads fail past a point: the device's own exception comes out."""

    def __init__(self, inner: RawFileDevice, limit: int) -> None:
        self.inner = inner
        self._size = inner.size
        self._sector_size = 512
        self.limit = limit
        self.writable = True

    def _readinto(self, offset: int, view: memoryview) -> None:
        if offset + len(view) > self.limit:
            raise OSError(5, f"injected read failure at {offset}")
        self.inner.readinto(offset, view)

    def _write(self, offset: int, view: memoryview) -> None:
        self.inner.write(offset, view)


def test_a_device_error_is_raised_as_such(volume: Path) -> None:
    inner = RawFileDevice(str(volume), writable=True)
    with pytest.raises(CorruptImage, match="injected read failure"):
        NtfsEditor(_Failing(inner, 8192))  # the boot sector reads, $MFT does not
