"""Two app layers packaged independently on one Windows OS layer (GPT + NTFS), each installed
through ntfs-3g, are merged at file level by publish (libntfs-3g in process).

The oracle is ntfs-3g itself: the same two installs made one after the other through ntfs-3g
on a copy of the OS disk give the expected volume. The exported image's volume, mounted by
ntfs-3g, must show the same paths, contents, named streams, hard links, symlinks, attributes,
security descriptors, junctions and times, and sleuthkit's ``fls`` the same names.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from regipy.exceptions import RegistryKeyNotFoundException
from regipy.registry import RegistryHive

from strata.errors import StateError
from strata.fs.ntfs import editor as ntfs_editor
from strata.layer.filedelta import NO_BLOB
from strata.ops import layers
from strata.store import Manifest, Store

from support.filelevel_tools import (
    export_raw,
    extract,
    finalize,
    package,
    tamper_manifest,
    to_raw,
)
from support.integrity_tools import (
    CLEAN_SOFTWARE,
    CONFIG,
    PART_SIZE,
    PART_START,
    build_hive,
    merged,
    on_ntfs,
    package_machine,
    read_from_disk,
    replace_hive,
    windows_disk,
)
from support.ntfs_tools import (
    fls,
    junction,
    mounted,
    needs_editor_and_mount,
    security_descriptor,
    walk_mount,
)
from support.tools import result_of, strata, strata_json

pytestmark = needs_editor_and_mount()

BIG = np.random.default_rng(3).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


def _settle(root: Path, paths: list[str], stamp: int) -> None:
    """Give ``paths`` (and so the expected volume, made in another run) fixed times:
    created, modified, accessed, in nanoseconds since 1970 (``system.ntfs_crtime`` takes a
    FILETIME).  Deepest first: a child's new times change its directory's."""
    for rel in sorted(paths, key=lambda p: -p.count("/")):
        path = root / rel
        os.utime(path, ns=(stamp + 300_000_000_000, stamp + 200_000_000_000), follow_symlinks=False)
        # After this, ntfs-3g ignores a utime of the same file in the same mount: set it last.
        created = struct.pack("<q", stamp // 100 + 116_444_736_000_000_000)
        os.setxattr(path, "system.ntfs_crtime", created, follow_symlinks=False)


def _base(root: Path) -> None:
    data = root / "Data"
    (data / "olddir" / "inner").mkdir(parents=True)
    (data / "olddir" / "inner" / "x.txt").write_bytes(b"old x\n")
    (data / "shared.txt").write_bytes(b"from the OS\n")
    (data / "del_by_b.txt").write_bytes(b"B removes this\n")
    (data / "keep.txt").write_bytes(b"nobody touches this\n")
    (root / "Program Files").mkdir()


def _app_a(root: Path) -> None:
    app = root / "Program Files" / "AppA"
    (app / "bin").mkdir(parents=True)
    (app / "bin" / "a.exe").write_bytes(b"MZ" + BIG)
    (app / "readme.txt").write_bytes(b"App A\r\n")
    (app / "empty.txt").write_bytes(b"")
    os.setxattr(app / "readme.txt", "user.Zone.Identifier", b"[ZoneTransfer]\r\nZoneId=3\r\n")
    os.link(app / "readme.txt", app / "README-link.txt")
    os.symlink("readme.txt", app / "readme.lnk")
    subprocess.run(
        ["setfattr", "-h", "-n", "system.ntfs_attrib_be", "-v", "0x00000022", app / "empty.txt"],
        check=True,
    )
    (root / "Data" / "shared.txt").write_bytes(b"A's version\n")
    touched = ["Program Files", "Program Files/AppA", "Program Files/AppA/bin",
               "Program Files/AppA/bin/a.exe", "Program Files/AppA/empty.txt",
               "Program Files/AppA/readme.lnk", "Data/shared.txt"]  # fmt: skip
    _settle(root, touched, 1_500_000_000_123_456_700)
    os.utime(app / "readme.txt", ns=(1_600_000_000_123_456_700, 1_500_000_000_987_654_300))
    os.setxattr(app / "readme.txt", "system.ntfs_crtime", struct.pack("<q", 13_000_000_000_000_001))


def _app_b(root: Path) -> None:
    app = root / "Program Files" / "AppB"
    app.mkdir()
    (app / "b.dll").write_bytes(b"MZ" + b"B" * 70_000)
    os.setxattr(app / "b.dll", "system.ntfs_acl", security_descriptor(read_only=True))
    (app / "to-a").mkdir()
    _settle(root, ["Program Files/AppB/to-a"], 1_700_000_000_000_000_000)  # a junction's: EIO
    os.setxattr(app / "to-a", "system.ntfs_reparse_data", junction("C:\\Program Files\\AppA"))
    (root / "Data" / "shared.txt").write_bytes(b"B's version, the winner\n")
    (root / "Data" / "del_by_b.txt").unlink()
    shutil.rmtree(root / "Data" / "olddir")
    touched = ["Program Files", "Program Files/AppB", "Program Files/AppB/b.dll", "Data",
               "Data/shared.txt"]  # fmt: skip
    _settle(root, touched, 1_700_000_000_000_000_000)


# Each app's SOFTWARE hive: the OS layer's (CLEAN_SOFTWARE) with what its installer wrote.
CBS = "Microsoft\\Windows\\CurrentVersion\\Component Based Servicing"
INSTALLER = "Microsoft\\Windows\\CurrentVersion\\Installer"
SOFTWARE = {
    "appA": merged(
        CLEAN_SOFTWARE,
        {
            "Vendor\\AppA": {
                "InstallDir": ["sz", "C:\\Program Files\\AppA"],
                "Version": ["dword", 1],
            },
            "Vendor\\Shared": {"Owner": ["sz", "A"], "OnlyA": ["dword", 7]},
        },
    ),
    "appB": {
        **{
            k: v
            for k, v in merged(
                CLEAN_SOFTWARE,
                {
                    "Vendor\\AppB\\Plugins": {"Count": ["dword", 3]},
                    "Vendor\\Shared": {"Owner": ["sz", "B"]},
                    INSTALLER: {"InstallerLocation": ["sz", "C:\\B"]},
                },
            ).items()
            if k != CBS
        },  # B removed a key of the OS layer's
    },
}


def _both(*changes: Callable[[Path], None]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        for one in changes:
            one(root)

    return change


@dataclass(frozen=True)
class World:
    root: Path
    store: Path
    expected: Path  # the OS disk with both installs made by ntfs-3g, A then B


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("ntfsmerge")
    store = root / "store"
    os_raw = windows_disk(root)
    on_ntfs(os_raw, _base, root)
    strata_json("os", "import", "win", os_raw, "--version", "1", "--store", store)
    for layer, change in (("appA", _app_a), ("appB", _app_b)):
        pkg = package(store, layer, root / f"out-{layer}")
        work = root / f"work-{layer}"
        work.mkdir()
        hive = build_hive(root / f"SOFTWARE.{layer}", SOFTWARE[layer])
        package_machine(pkg, work, _both(change, replace_hive("SOFTWARE", hive)))
        finalize(store, pkg)
    expected = root / "expected.raw"
    shutil.copyfile(os_raw, expected)
    on_ntfs(expected, _app_a, root)
    on_ntfs(expected, _app_b, root)
    return World(root, store, expected)


def _volume(world: World, raw: Path, name: str) -> Path:
    return extract(raw, PART_START, PART_SIZE, world.root / name)


def _xattrs(path: Path) -> dict[str, bytes]:
    """What ntfs-3g shows of one file beyond its bytes: named streams (``user.*``), the
    attributes, the security descriptor, the reparse value, and the created, modified and
    accessed times (the MFT-change time is the merge's own)."""
    out = {}
    for name in os.listxattr(path, follow_symlinks=False):
        out[name] = os.getxattr(path, name, follow_symlinks=False)
    for name in ("system.ntfs_attrib_be", "system.ntfs_acl", "system.ntfs_reparse_data"):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            out[name] = b"(none)"
    times = os.getxattr(path, "system.ntfs_times", follow_symlinks=False)
    out["times"] = np.frombuffer(times, "<i8")[:3] // 10  # the delta keeps µs
    return out


def _seen(volume: Path) -> dict[str, tuple[object, dict[str, bytes]]]:
    with mounted(volume, streams="xattr") as mnt:
        files = walk_mount(mnt)
        return {
            # ntfs-3g shows a junction to C: as a symlink into the mount point
            path: (
                replace(seen, target=(seen.target or "").replace(str(mnt), "C:")),
                _xattrs(mnt / path.lstrip("/")),
            )
            for path, seen in files.items()
            if not path.startswith("/Windows/System32/config")  # hives: neither app's
        }


@pytest.fixture(scope="module")
def published(world: World) -> dict:
    args = ["--name", "both", "--os", "win", "--app", "appA", "--app", "appB"]
    return result_of(strata_json("image", "publish", *args, "--store", world.store))


def test_publish_merges_ntfs_at_file_level(world: World, published: dict) -> None:
    assert published["merge"] == "file"
    assert published["ntfs_volumes"] == [1] and published["fat_volumes"] == []
    conflicts = {c["path"]: c for c in published["conflicts"]}
    assert conflicts["/Data/shared.txt"]["winner"] == "appB:1"
    hive = "/Windows/System32/config/SOFTWARE"
    assert set(conflicts) == {"/Data/shared.txt", hive, f"{hive}:Vendor\\Shared\\Owner"}


def test_merged_volume_is_what_ntfs3g_makes_of_both_installs(world: World, published: dict) -> None:
    raw = export_raw(world.store, "both", world.root / "both.raw")
    ours = _seen(_volume(world, raw, "ours.vol"))
    theirs = _seen(_volume(world, world.expected, "theirs.vol"))
    assert sorted(ours) == sorted(theirs)
    for path in theirs:
        (seen_ours, meta_ours), (seen_theirs, meta_theirs) = ours[path], theirs[path]
        assert (seen_ours.type, seen_ours.size, seen_ours.sha256, seen_ours.target) == (
            seen_theirs.type,
            seen_theirs.size,
            seen_theirs.sha256,
            seen_theirs.target,
        ), path
        times_ours, times_theirs = meta_ours.pop("times"), meta_theirs.pop("times")
        assert meta_ours == meta_theirs, path
        assert times_ours.tolist() == times_theirs.tolist(), path


def test_hard_links_stay_one_file(world: World, published: dict) -> None:
    raw = export_raw(world.store, "both", world.root / "links.raw")
    with mounted(_volume(world, raw, "links.vol")) as mnt:
        app = mnt / "Program Files" / "AppA"
        assert os.stat(app / "readme.txt").st_ino == os.stat(app / "README-link.txt").st_ino
        assert os.stat(app / "readme.txt").st_nlink == 2


def test_sleuthkit_reads_the_same_names(world: World, published: dict) -> None:
    raw = export_raw(world.store, "both", world.root / "fls.raw")
    ours = _user_names(fls(_volume(world, raw, "fls-ours.vol")))
    theirs = _user_names(fls(_volume(world, world.expected, "fls-theirs.vol")))
    assert ("/Program Files/AppA/readme.txt:Zone.Identifier", 26) in theirs
    assert ours == theirs


def _user_names(rows: list) -> set[tuple[str, int]]:
    """Names and sizes fls lists, streams included, without the metadata files (``$MFT``,
    ``$Secure``) and directories' sizes: those follow how records and index blocks were
    allocated."""
    return {
        ("/" + r.path, r.size if r.kind != "d" else 0)
        for r in rows
        if not r.path.startswith(("$", str(CONFIG)))  # hives: merged, see below
    }


# -- hostile or damaged layers: refused before publish writes anything -------------------------


def _packs(world: World) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (world.store / "packs").rglob("*") if p.is_file()}


def _hostile_copy(world: World, name: str, change: Callable[[Manifest], None]) -> str:
    """App A packaged again as layer ``name``:1, whose stored manifest ``change`` alters."""
    pkg = package(world.store, name, world.root / f"out-{name}")
    work = world.root / f"work-{name}"
    work.mkdir()
    package_machine(pkg, work, _app_a)
    finalize(world.store, pkg)
    tamper_manifest(world.store, f"{name}:1", change)
    return f"{name}:1"


def _refused(world: World, layer: str, code: int) -> str:
    before = _packs(world)
    args = ["--name", f"with-{layer}", "--os", "win", "--app", "appB", "--app", layer]
    got = strata("image", "publish", *args, "--store", world.store, check=False)
    assert got.returncode == code, got.stdout + got.stderr
    assert "Traceback" not in got.stderr
    assert f"with-{layer}" not in strata("image", "list", "--store", world.store).stdout
    assert _packs(world) == before  # not a chunk written
    return got.stderr


def test_a_delta_naming_an_ntfs_metadata_file_is_refused(world: World) -> None:
    def into_mft(m: Manifest) -> None:
        schema, names = m.tables["file-names"]
        old = b"/Program Files/AppA/bin"
        raw = names.tobytes().replace(old, b"/$MFT/".ljust(len(old), b"x"), 1)
        m.tables["file-names"] = (schema, np.frombuffer(raw, names.dtype).copy())

    layer = _hostile_copy(world, "mft", into_mft)
    shown = strata("layer", "diff", layer, "--store", world.store, check=False)
    assert shown.returncode == 5 and "NTFS metadata file $MFT" in shown.stderr
    err = _refused(world, "mft", 5)
    assert f"layer {layer}" in err and "NTFS metadata file $MFT" in err


def test_a_descriptor_libntfs3g_finds_invalid_is_refused(world: World) -> None:
    junk = b"\x01\x00\x04\x80" + b"\xee" * 60  # self-relative, offsets past its end
    with Store(world.store) as st:
        junk_id = np.frombuffer(st.put(junk), "V16")[0]

    def garble(m: Manifest) -> None:
        _, facts = m.tables["file-ntfs"]
        _, blobs = m.tables["file-ntfs-blobs"]
        used = facts["security_blob"][facts["security_blob"] != NO_BLOB]
        assert len(used)
        blobs["id"][used] = junk_id
        blobs["length"][used] = len(junk)

    layer = _hostile_copy(world, "badsd", garble)
    err = _refused(world, "badsd", 5)
    assert f"layer {layer}: corrupt file delta" in err
    assert "security descriptor: the value is not valid" in err


# -- the registry: a hive both layers changed is merged key by key -----------------------------


def _software(world: World) -> RegistryHive:
    raw = export_raw(world.store, "both", world.root / "registry.raw")
    hive = read_from_disk(raw, str(CONFIG / "SOFTWARE"), world.root / "SOFTWARE.merged", world.root)
    return RegistryHive(str(hive))


def _value(hive: RegistryHive, key: str, name: str) -> object:
    return hive.get_key("\\" + key).get_value(name)


def test_a_hive_both_layers_changed_holds_both(world: World, published: dict) -> None:
    hive = _software(world)
    assert _value(hive, "Vendor\\AppA", "InstallDir") == "C:\\Program Files\\AppA"
    assert _value(hive, "Vendor\\AppA", "Version") == 1
    assert _value(hive, "Vendor\\AppB\\Plugins", "Count") == 3
    assert _value(hive, "Vendor\\Shared", "OnlyA") == 7  # A's value beside B's in one key
    assert _value(hive, "Vendor\\Shared", "Owner") == "B"  # both set it: the later wins
    assert _value(hive, INSTALLER, "InstallerLocation") == "C:\\B"
    assert _value(hive, "Microsoft\\Updates", "UpdateExeVolatile") == 0  # the OS layer's
    with pytest.raises(RegistryKeyNotFoundException):
        hive.get_key("\\" + CBS)  # B removed it


def test_registry_merges_and_value_conflicts_are_reported(published: dict) -> None:
    (merge,) = published["registry_merges"]  # A's hive was taken whole, B's merged onto it
    assert merge["layer"] == "appB:1" and merge["path"] == "/Windows/System32/config/SOFTWARE"
    # Vendor, Vendor\\AppB, its Plugins and Vendor\\Shared are new to the OS layer's hive
    assert merge["keys_added"] == 4 and merge["keys_deleted"] == 1 and merge["values_set"] == 3
    conflicts = {c["path"]: c for c in published["conflicts"]}
    assert conflicts["/Windows/System32/config/SOFTWARE"]["merged"] == "registry"
    value = conflicts["/Windows/System32/config/SOFTWARE:Vendor\\Shared\\Owner"]
    assert value["kind"] == "registry value" and value["winner"] == "appB:1"


def test_a_packaging_disk_on_independent_apps_holds_both(world: World) -> None:
    """The base a packaging machine boots from, for a layer needing both apps, is their NTFS
    merge: their files and both apps' registry keys (read by ntfs-3g and regipy)."""
    out = world.root / "out-appC"
    out.mkdir()
    req = layers.PackagingRequest(
        layer="appC", os="win", fmt="vhdx", name="appC-pkg", out=str(out), apps=("appA", "appB")
    )
    pkg = layers.create_packaging_disk(req, store=world.store)
    raw = to_raw(pkg, world.root / "appC-pkg.raw")
    with mounted(_volume(world, raw, "appC.vol")) as mnt:
        assert (mnt / "Program Files" / "AppA" / "bin" / "a.exe").read_bytes() == b"MZ" + BIG
        assert (mnt / "Program Files" / "AppB" / "b.dll").stat().st_size == 70_002
        assert (mnt / "Data" / "shared.txt").read_bytes() == b"B's version, the winner\n"
        hive = RegistryHive(str(mnt / CONFIG / "SOFTWARE"))
        assert _value(hive, "Vendor\\AppA", "Version") == 1
        assert _value(hive, "Vendor\\AppB\\Plugins", "Count") == 3


def test_layer_diff_shows_what_a_layer_changed_in_the_registry(world: World) -> None:
    """``layer diff --registry``: app B's SOFTWARE against the OS layer's, key by key."""
    shown = result_of(strata_json("layer", "diff", "appB:1", "--registry", "--store", world.store))
    (hive,) = shown["registry"]
    assert hive["hive"] == "/Windows/System32/config/SOFTWARE" and hive["partition"] == 1
    assert hive["added"] == ["Vendor", "Vendor\\AppB", "Vendor\\AppB\\Plugins", "Vendor\\Shared"]
    assert hive["deleted"] == [CBS]
    values = {(v["key"], v["name"]): v for v in hive["values"]}
    assert values[(INSTALLER, "InstallerLocation")] == {
        "key": INSTALLER, "name": "InstallerLocation", "change": "set", "type": "REG_SZ",
        "data": "C:\\B", "was": "C:\\x",
    }  # fmt: skip
    assert values[("Vendor\\AppB\\Plugins", "Count")]["data"] == 3
    text = strata("layer", "diff", "appB:1", "--registry", "--store", world.store).stdout
    assert "registry /Windows/System32/config/SOFTWARE (partition 1): 4 keys added" in text
    assert f"  - key    {CBS}" in text
    plain = result_of(strata_json("layer", "diff", "appB:1", "--store", world.store))
    assert "registry" not in plain  # asked for only: it reads both hives


def test_without_libntfs3g_the_refusal_says_how_to_get_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A strata built without strata._ntfs treats NTFS volumes as block ranges: two layers
    that changed the same blocks there are refused, and the refusal says what is missing."""
    from strata.ops import image

    monkeypatch.setattr(ntfs_editor, "available", lambda: False)
    tpl = image.template_from({"name": "no-ntfs", "os": "win", "apps": ["appA", "appB"]})
    with pytest.raises(StateError, match=r"built without libntfs-3g.*install ntfs-3g-dev"):
        image.publish(tpl, store=world.store)


def test_publish_text_names_each_registry_merge(world: World, published: dict) -> None:
    args = ["--name", "both-text", "--os", "win", "--app", "appA", "--app", "appB"]
    text = strata("image", "publish", *args, "--store", world.store).stdout
    hive = "/Windows/System32/config/SOFTWARE (partition 1)"
    assert f"conflict: {hive}: appA:1@100, appB:1@200 -> merged key by key" in text
    assert (
        f"registry {hive}: appB:1's changes merged key by key (4 keys added, 1 removed; "
        "3 values set, 0 removed)"
    ) in text


def test_an_entry_without_its_descriptor_is_merged_with_a_warning(world: World) -> None:
    """A delta whose entries carry no descriptor (an older manifest, or one finalize could
    not read) still merges; each new file keeps libntfs-3g's default, and is named."""

    def forget(m: Manifest) -> None:
        _, facts = m.tables["file-ntfs"]
        facts["security_blob"] = NO_BLOB

    _hostile_copy(world, "nosd", forget)
    args = ["--name", "with-nosd", "--os", "win", "--app", "appB", "--app", "nosd"]
    got = strata("image", "publish", *args, "--store", world.store)
    line = "strata: warning: nosd:1: /Program Files/AppA/bin/a.exe: no security descriptor"
    assert line in got.stderr, got.stderr
    shown = result_of(strata_json("image", "publish", *args[:1], "with-nosd-json", *args[2:],
                                  "--store", world.store))  # fmt: skip
    assert any(w["path"] == "/Program Files/AppA/bin/a.exe" for w in shown["merge_warnings"])
