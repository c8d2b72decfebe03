"""``layer.hivemerge``: one layer's changes to a hive (found against the hive it was packaged
on) made on a hive another layer changed. Hives are built by hivexsh (fixtures/hive_build.py);
the merged hive is read back by regipy, a reader that shares no code with libhivex."""

from __future__ import annotations

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
