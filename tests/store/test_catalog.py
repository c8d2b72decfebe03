"""Layer catalog: kinds, versions, state machine, commits, icons, audit history, CLI."""

from __future__ import annotations

import sqlite3
import struct
import zlib
from pathlib import Path

import pytest

from strata.errors import InvalidInput, NotFound, StateError
from strata.store import Manifest, Store
from strata.store.db import transaction

from support.store_tools import blocks
from support.tools import result_of, strata, strata_json


def png(width: int = 16, height: int = 16) -> bytes:
    """A real PNG made with zlib: signature, IHDR, IDAT, IEND with correct CRCs."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)))
    sig = b"\x89PNG\r\n\x1a\n"
    return sig + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Store.init(tmp_path / "s") as s:
        yield s


def commit_small(store: Store, layer: str, version: str, seed: int) -> bytes:
    store.catalog.create_version(layer, version)
    store.catalog.transition(layer, version, "finalizing")
    manifest = Manifest("os-layer")
    manifest.add_table("chunks", "chunks-v1", store.put_blocks(blocks([seed], 1 << 20)))
    mid = store.put_manifest(manifest)
    store.commit_version(layer, version, mid, comment=f"commit {version}")
    return mid


def test_layer_kinds_and_owning_os_layer(store: Store) -> None:
    store.catalog.create_layer("win10", "os", description="Windows 10")
    store.catalog.create_layer("office", "app", os_layer="win10", icon=png())
    store.catalog.create_layer("tools", "platform", platform_types=["vsphere"], purpose="publish")
    with pytest.raises(InvalidInput, match="needs its OS layer"):
        store.catalog.create_layer("orphan", "app")
    with pytest.raises(InvalidInput, match="not an OS layer"):
        store.catalog.create_layer("bad", "app", os_layer="office")
    with pytest.raises(InvalidInput, match="already exists"):
        store.catalog.create_layer("win10", "os")
    with pytest.raises(InvalidInput, match="kind"):
        store.catalog.create_layer("x", "driver")
    with pytest.raises(NotFound):
        store.catalog.create_layer("y", "app", os_layer="nope")
    assert store.catalog.layer("office")["os_layer"] == "win10"
    assert store.catalog.layer("tools")["platform_types"] == ["vsphere"]
    assert store.catalog.icon("office") == (png(), "image/png")
    assert [r["name"] for r in store.catalog.layers()] == ["win10", "office", "tools"]


@pytest.mark.parametrize(
    "icon",
    [
        b"GIF89a" + bytes(40),
        png()[:30],
        png()[:-12],
        png().replace(b"IHDR", b"IHDX"),
        JPEG[:-2],
        b"",
        b"\x89PNG\r\n\x1a\n" + bytes(100),
    ],
)
def test_icon_must_be_png_or_jpeg_by_content(store: Store, icon: bytes) -> None:
    with pytest.raises(InvalidInput, match="icon"):
        store.catalog.create_layer("a", "os", icon=icon)
    with pytest.raises(NotFound):
        store.catalog.layer("a")


def test_icon_jpeg_accepted_and_set_icon_audited(store: Store) -> None:
    store.catalog.create_layer("a", "os")
    store.catalog.set_icon("a", JPEG, comment="new icon")
    assert store.catalog.icon("a") == (JPEG, "image/jpeg")
    assert store.catalog.history("a")[-1]["comment"] == "new icon"


def test_state_machine(store: Store) -> None:
    store.catalog.create_layer("os", "os")
    v = store.catalog.create_version("os", "v1")
    assert v["state"] == "packaging" and v["manifest"] is None
    with pytest.raises(StateError):
        store.catalog.transition("os", "v1", "deployable")
    store.catalog.transition("os", "v1", "finalizing")
    store.catalog.transition("os", "v1", "packaging")  # the finalize gate refused the disk
    store.catalog.transition("os", "v1", "failed")
    for state in ("packaging", "finalizing", "failed"):
        with pytest.raises(StateError):
            store.catalog.transition("os", "v1", state)
    with pytest.raises(InvalidInput):
        store.catalog.transition("os", "v1", "bogus")
    store.catalog.create_version("os", "v2")
    with pytest.raises(StateError, match="only a finalizing"):
        store.commit_version("os", "v2", b"\1" * 16)


def test_commit_base_and_sizes(store: Store) -> None:
    store.catalog.create_layer("os", "os")
    mid = commit_small(store, "os", "v1", 1)
    v1 = store.catalog.version("os", "v1")
    assert v1["state"] == "deployable" and v1["manifest"] == mid.hex()
    assert v1["logical_size"] == 1 << 20 and 0 < v1["stored_size"] < 1 << 20
    assert store.catalog.create_version("os", "v2")["base"] == "v1"
    with pytest.raises(StateError, match="not deployable"):
        store.catalog.create_version("os", "v3", base="v2")
    with pytest.raises(NotFound):
        store.catalog.create_version("os", "v3", base="v9")
    with pytest.raises(InvalidInput, match="already has"):
        store.catalog.create_version("os", "v1")


def test_commit_refuses_manifest_naming_missing_chunk(store: Store) -> None:
    store.catalog.create_layer("os", "os")
    store.catalog.create_version("os", "v1")
    store.catalog.transition("os", "v1", "finalizing")
    manifest = Manifest("os-layer")
    table = store.put_blocks(blocks([3], 1 << 20))
    table["id"][5] = b"\x42" * 16
    manifest.add_table("chunks", "chunks-v1", table)
    mid = store.put_manifest(manifest)
    with pytest.raises(NotFound, match="42424242"):
        store.commit_version("os", "v1", mid, comment="try")
    assert store.catalog.version("os", "v1")["state"] == "finalizing"
    last = store.catalog.history("os")[-1]
    assert (last["operation"], last["result"]) == ("commit-version", "failed")
    with pytest.raises(NotFound, match="manifest"):
        store.commit_version("os", "v1", b"\x01" * 16)


def test_history_is_append_only(store: Store) -> None:
    store.catalog.create_layer("os", "os", comment="hello")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("UPDATE history SET comment = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("DELETE FROM history")
    assert store.catalog.history("os")[0]["comment"] == "hello"


def test_layer_cli_json(tmp_path: Path) -> None:
    root = tmp_path / "s"
    assert result_of(strata_json("store", "init", "--store", root))["created"] is True
    with Store(root) as store:
        store.catalog.create_layer("win", "os", comment="imported")
        commit_small(store, "win", "1.0", 4)
        store.catalog.create_layer("app", "app", os_layer="win")
        store.catalog.create_version("app", "a1", comment="packaging starts")
    layers = result_of(strata_json("layer", "list", "--store", root))["layers"]
    assert [(r["name"], r["versions"], r["latest"]) for r in layers] == [
        ("win", 1, "1.0"),
        ("app", 1, None),
    ]
    shown = result_of(strata_json("layer", "show", "win", "--store", root))["layer"]
    assert shown["versions"][0]["state"] == "deployable"
    history = result_of(strata_json("layer", "history", "win", "--store", root))["history"]
    assert [h["operation"] for h in history] == [
        "create-layer",
        "create-version",
        "state-finalizing",
        "commit-version",
    ]
    assert history[0]["comment"] == "imported" and history[-1]["comment"] == "commit 1.0"
    missing = strata("layer", "show", "nope", "--store", root)
    assert missing.returncode == 4 and "nope" in missing.stderr
    text = strata("layer", "history", "--store", root, check=True)
    assert "packaging starts" in text.stdout
    stats = result_of(strata_json("store", "stats", "--store", root))
    assert stats["versions"] == 1 and stats["logical_bytes"] == 1 << 20


def test_store_location_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from strata.store import default_store, store_path

    monkeypatch.setenv("STRATA_STORE", str(tmp_path / "env"))
    assert store_path(tmp_path / "arg") == tmp_path / "arg"
    assert store_path(None) == tmp_path / "env"
    monkeypatch.delenv("STRATA_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store_path(None) == tmp_path / "xdg" / "strata" / "store" == default_store()
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_store() == Path.home() / ".local" / "share" / "strata" / "store"
    proc = strata("store", "stats", "--store", tmp_path / "none")
    assert proc.returncode == 4 and "strata store init" in proc.stderr


@pytest.mark.parametrize("bad", ["good:1", "app@200", "../../etc/x", "a/b", "a\\b", "..", "."])
def test_names_that_clash_with_references_or_paths_are_refused(store: Store, bad: str) -> None:
    """':' splits NAME:VERSION and '@' NAME@PRIORITY; an image name must stay a file name."""
    store.catalog.create_layer("os", "os")
    with pytest.raises(InvalidInput, match="not allowed") as layer:
        store.catalog.create_layer(bad, "os")
    assert repr(bad) in layer.value.message
    with pytest.raises(InvalidInput, match="not allowed"):
        store.catalog.create_version("os", bad)
    mid = commit_small(store, "os", "v1", 1)
    with pytest.raises(InvalidInput, match="not allowed"):
        store.catalog.add_image(bad, mid, {}, 0, 0)
    assert [r["name"] for r in store.catalog.layers()] == ["os"]
    assert [v["name"] for v in store.catalog.versions("os")] == ["v1"]
    assert store.catalog.images() == []


def test_discard_version_undoes_only_an_empty_packaging_version(store: Store) -> None:
    store.catalog.create_layer("os", "os")
    commit_small(store, "os", "v1", 1)
    store.catalog.create_version("os", "v2")
    store.catalog.discard_version("os", "v1", drop_layer=True)  # deployable: stays
    store.catalog.discard_version("os", "v2", drop_layer=True)  # v1 is left: the layer stays
    assert [v["name"] for v in store.catalog.versions("os")] == ["v1"]
    store.catalog.create_layer("new", "os")
    store.catalog.create_version("new", "1")
    store.catalog.discard_version("new", "1", drop_layer=True)
    assert [r["name"] for r in store.catalog.layers()] == ["os"]
    assert store.catalog.history()[-1]["operation"] == "discard-version"


def test_delete_versions_and_layer_with_their_history(store: Store) -> None:
    """Versions go newest first (a version before its base) with a row each, the layer with
    its own; what depends on a version is found by ``based_on`` and ``tied_to``, and the
    schema's foreign keys refuse a delete that would leave a dangling reference."""
    store.catalog.create_layer("os", "os")
    store.catalog.create_layer("app", "app", os_layer="os")
    commit_small(store, "os", "v1", 1)
    commit_small(store, "os", "v2", 2)  # base v1
    assert store.catalog.based_on("os", ["v1"]) == [("v2", "v1", "deployable")]
    assert store.catalog.based_on("os", ["v1", "v2"]) == []
    assert store.catalog.tied_to("os") == ["app"] and store.catalog.tied_to("app") == []
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), transaction(store.db):
        store.catalog.delete_versions("os", ["v1", "v2"], drop_layer=True)  # app belongs to it
    assert [v["name"] for v in store.catalog.versions("os")] == ["v1", "v2"]
    with transaction(store.db):
        store.catalog.delete_versions(
            "os", ["v1", "v2"], comment="gone", details={"v1": {"state": "deployable"}}
        )
    assert store.catalog.versions("os") == []
    with transaction(store.db):
        store.catalog.delete_versions("app", [], drop_layer=True, comment="app too")
    rows = store.catalog.history("app")
    assert (rows[-1]["operation"], rows[-1]["comment"]) == ("delete-layer", "app too")
    deleted = [(r["operation"], r["version"], r["details"]) for r in store.catalog.history("os")]
    assert deleted[-2:] == [
        ("delete-version", "v2", {}),
        ("delete-version", "v1", {"state": "deployable"}),
    ]
    with pytest.raises(NotFound):
        store.catalog.layer("app")
    with pytest.raises(NotFound):
        store.catalog.history("never")


def test_recorded_stacks_follow_the_latest_creation(store: Store) -> None:
    store.catalog.create_layer("os", "os")
    store.catalog.create_layer("app", "app", os_layer="os")
    store.catalog.create_version("os", "1")
    store.catalog.create_version("app", "1", stack=[["os", "1"]])
    store.catalog.create_version("app", "2", stack=[("os", "1"), ("app", "1")])
    assert store.catalog.recorded_stacks() == {
        ("app", "1"): [["os", "1"]],
        ("app", "2"): [["os", "1"], ["app", "1"]],
    }
    with transaction(store.db):
        store.catalog.delete_versions("app", ["1"])
    store.catalog.create_version("app", "1")  # made again, with no stack recorded
    assert ("app", "1") not in store.catalog.recorded_stacks()


def test_delete_image(store: Store) -> None:
    store.catalog.create_layer("os", "os")
    mid = commit_small(store, "os", "v1", 1)
    store.commit_image("img", mid, {"os": "os"})
    row = store.catalog.delete_image("img", comment="retired")
    assert row["manifest"] == mid.hex() and store.catalog.images() == []
    last = store.catalog.history()[-1]
    assert (last["operation"], last["image"], last["comment"]) == ("delete-image", "img", "retired")
    assert last["details"] == {"manifest": mid.hex(), "template": {"os": "os"}}
    with pytest.raises(NotFound, match="image 'img'"):
        store.catalog.delete_image("img")


def test_deleting_a_base_version_detaches_the_versions_made_from_it(store: Store) -> None:
    """A finalized version holds its base's content, so its base may go: the link becomes
    none (the foreign key would refuse a dangling one) and the history row names it."""
    store.catalog.create_layer("os", "os")
    commit_small(store, "os", "v1", 1)
    commit_small(store, "os", "v2", 2)  # base v1
    commit_small(store, "os", "v3", 3)  # base v2
    with transaction(store.db):
        store.catalog.delete_versions("os", ["v1"], comment="old")
    assert [(v["name"], v["base"]) for v in store.catalog.versions("os")] == [
        ("v2", None),
        ("v3", "v2"),
    ]
    last = store.catalog.history("os")[-1]
    assert (last["operation"], last["version"], last["details"]) == (
        "delete-version",
        "v1",
        {"detached": ["v2"]},
    )
