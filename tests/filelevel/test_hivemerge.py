"""``layer.hivemerge``: one layer's changes to a hive (found against the hive it was packaged
on) made on a hive another layer changed. Hives are built by hivexsh (fixtures/hive_build.py);
the merged hive is read back by regipy, a reader that shares no code with libhivex."""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import pytest
from regipy.exceptions import RegistryKeyNotFoundException
from regipy.registry import RegistryHive

from strata.integrity.hive import Hive
from strata.layer import hivemerge

from support.integrity_tools import build_hive

BASE = {
    "Software\\Keep": {"A": ["sz", "base"], "N": ["dword", 1]},
    "Software\\Change": {"Text": ["sz", "old"], "Gone": ["dword", 5], "Kind": ["dword", 9]},
    "Software\\Drop\\Deep": {"X": ["sz", "x"]},
    "Software\\Other": {},
}
MINE = {  # what one app's installer left: BASE changed
    "Software\\Keep": {"A": ["sz", "base"], "N": ["dword", 1]},
    "Software\\Change": {"text": ["sz", "new"], "Kind": ["sz", "nine"]},  # "text": any case
    "Software\\Added\\Sub": {"V": ["multi_sz", ["a", "b"]]},
    "Software\\Other": {"Late": ["dword", 2]},
}
THEIRS = {  # what an earlier app of the image made of BASE
    **BASE,
    "Software\\Change": {"Text": ["sz", "theirs"], "Gone": ["dword", 5], "Kind": ["dword", 9]},
    "Software\\Theirs": {"T": ["dword", 3]},
}


@pytest.fixture
def hives(tmp_path: Path) -> dict[str, Path]:
    return {name: build_hive(tmp_path / name, spec) for name, spec in
            (("base", BASE), ("mine", MINE), ("theirs", THEIRS))}  # fmt: skip


def test_changes_are_what_turns_the_base_into_mine(hives: dict[str, Path]) -> None:
    with Hive(str(hives["base"]), "base") as base, Hive(str(hives["mine"]), "mine") as mine:
        change = hivemerge.changes(base, mine)
    assert change.deleted_keys == ["Software\\Drop"]  # the topmost only
    assert change.added_keys == ["Software\\Added", "Software\\Added\\Sub"]
    assert set(change.values) == {"Software\\Change", "Software\\Added\\Sub", "Software\\Other"}
    text = change.values["Software\\Change"]
    assert text["TEXT"].value is not None and text["TEXT"].base is not None
    assert text["GONE"].value is None  # removed
    assert text["KIND"].value is not None and text["KIND"].value.type == 1  # dword -> sz
    assert change.counts == {
        "keys_added": 2, "keys_deleted": 1, "values_set": 4, "values_deleted": 1,
    }  # fmt: skip


def test_applied_to_another_layers_hive_both_stand(hives: dict[str, Path]) -> None:
    with Hive(str(hives["base"]), "base") as base, Hive(str(hives["mine"]), "mine") as mine:
        change = hivemerge.changes(base, mine)
    with Hive(str(hives["theirs"]), "theirs", write=True) as merged:
        touched = list(hivemerge.apply(merged, change))
        merged.commit()
    overridden = {(t.key, t.name) for t in touched if t.overridden}
    assert overridden == {("Software\\Change", "text")}  # theirs had changed it otherwise
    got = RegistryHive(str(hives["theirs"]))

    def value(key: str, name: str) -> object:
        return got.get_key("\\" + key).get_value(name)

    assert value("Software\\Theirs", "T") == 3  # the other layer's key stays
    assert value("Software\\Change", "Text") == "new"
    assert value("Software\\Change", "Kind") == "nine"
    assert value("Software\\Added\\Sub", "V") == ["a", "b"]
    assert value("Software\\Other", "Late") == 2
    assert value("Software\\Keep", "A") == "base"
    assert got.get_key("\\Software\\Change").get_value("Gone") is None
    with pytest.raises(RegistryKeyNotFoundException):
        got.get_key("\\Software\\Drop")


def test_a_key_already_gone_or_already_there_is_no_error(hives: dict[str, Path]) -> None:
    change = hivemerge.HiveChanges(
        deleted_keys=["Software\\NotThere"], added_keys=["Software\\Keep"]
    )
    with Hive(str(hives["theirs"]), "theirs", write=True) as merged:
        assert list(hivemerge.apply(merged, change)) == []
        merged.commit()
    assert RegistryHive(str(hives["theirs"])).get_key("\\Software\\Keep").get_value("N") == 1


def test_binary_and_default_values_keep_their_bytes(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 3
    base = build_hive(tmp_path / "b", {"K": {}})
    mine = build_hive(tmp_path / "m", {"K": {"Bin": ["sz", "placeholder"]}})
    with Hive(str(mine), "mine", write=True) as h:  # a REG_BINARY and a default value
        node = h.key("K")
        assert node is not None
        h.set_values(
            node, [hivemerge.Value("Bin", 3, blob), hivemerge.Value("", 4, struct.pack("<I", 42))]
        )
        h.commit()
    with Hive(str(base), "base") as b, Hive(str(mine), "mine") as m:
        change = hivemerge.changes(b, m)
    with Hive(str(base), "base", write=True) as merged:
        list(hivemerge.apply(merged, change))
        merged.commit()
    with Hive(str(base), "merged") as again:
        node = again.key("K")
        assert node is not None
        values = {v.name: v for v in again.values(node)}
    assert values["Bin"].data == blob and values["Bin"].type == 3
    assert values[""].as_int() == 42


def _grown(tmp_path: Path, seed: int, edits: int) -> tuple[Path, Path]:
    """A hive of 4 000 keys, and a copy that hivex changed in place, as an installer does:
    keys added (some deep) and removed, values set, changed and removed."""
    rng = random.Random(seed)
    base = build_hive(tmp_path / f"base{seed}", {"Software": {}})
    with Hive(str(base), "base", write=True) as h:
        sw = h.key("Software")
        assert sw is not None
        for v in range(80):
            vendor = h.add_key(sw, f"Vendor{v}")
            for k in range(50):
                node = h.add_key(vendor, f"Key{k}")
                h.set_values(node, [hivemerge.Value("V", 4, k.to_bytes(4, "little"))])
        h.commit()
    mine = tmp_path / f"mine{seed}"
    shutil.copyfile(base, mine)
    with Hive(str(mine), "mine", write=True) as h:
        for n in range(edits):
            path = f"Software\\Vendor{rng.randrange(80)}\\Key{rng.randrange(50)}"
            node = h.key(path)
            if node is None:
                continue
            kind = rng.randrange(5)
            if kind == 0:
                h.delete_key(node)
            elif kind == 1:
                deep = h.add_key(h.add_key(node, f"New{n}"), "Deeper")
                h.set_values(deep, [hivemerge.Value("D", 1, "x\0".encode("utf-16-le"))])
            elif kind == 2:
                h.set_values(node, [])
            else:
                value = hivemerge.Value(f"W{n % 3}", 3, bytes([n % 256]) * rng.randrange(1, 40))
                h.set_values(node, [*h.values(node), value])
        h.commit()
    return base, mine


@pytest.mark.parametrize("seed", range(12))
def test_the_changed_pages_give_what_the_whole_walk_gives(tmp_path: Path, seed: int) -> None:
    base, mine = _grown(tmp_path, seed, edits=1 + seed * 3)
    assert hivemerge.changed_keys(str(base), str(mine)) is not None  # the targeted path ran
    with Hive(str(base), "base") as b, Hive(str(mine), "mine") as m:
        fast, whole = hivemerge.changes(b, m), hivemerge.walked(b, m)
    assert sorted(fast.added_keys) == sorted(whole.added_keys)
    assert sorted(fast.deleted_keys) == sorted(whole.deleted_keys)
    assert fast.values == whole.values
    assert fast.counts == whole.counts and sum(whole.counts.values()) > 0


def test_a_reorganised_hive_is_walked_whole(tmp_path: Path) -> None:
    base = build_hive(tmp_path / "a", BASE)
    other = build_hive(tmp_path / "b", MINE)  # built apart: nearly every page differs
    assert hivemerge.changed_keys(str(base), str(other)) is None
