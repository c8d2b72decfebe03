"""Deleting layer versions, layers and images: what may go, what is refused (naming what
depends on it, nothing changed), what `store gc` reclaims afterwards, and that images
published before stay whole (qemu-img compares their exports with the expected disk)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from strata import api
from strata.errors import Conflict, InvalidInput, NotFound, StateError
from strata.ops import layers as layer_ops
from strata.store import Store

from support.images import MiB, random_bytes, write_sparse_raw
from support.layers import (
    apply_to_raw,
    apply_with_strata,
    compare_with_qemu,
    expected_copy,
    finalize_args,
)
from support.tools import qemu_img, result_of, strata, strata_json

OS_SIZE = 64 * MiB


def _os_raw(root: Path) -> Path:
    return write_sparse_raw(root / "os.raw", OS_SIZE, [(0, MiB), (40 * MiB, 2 * MiB)], seed=4)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store holding OS layer win:1, imported from ``os.raw`` beside it."""
    store = tmp_path / "store"
    proc = strata("os", "import", "win", _os_raw(tmp_path), "--version", "1", "--store", store)
    assert proc.returncode == 0, proc.stderr
    return store


def _package(store: Path, layer: str, name: str | None = None, *extra: str) -> dict[str, Any]:
    out = store.parent / "out"
    out.mkdir(exist_ok=True)
    events = strata_json(
        "packaging-disk",
        "create",
        "--layer",
        layer,
        "--os",
        "win",
        "--format",
        "vhd",
        "--name",
        name or layer,
        "--out",
        out,
        "--store",
        store,
        *extra,
    )
    return result_of(events)


def _finalize(store: Path, pkg: dict[str, Any]) -> None:
    proc = strata(*finalize_args(pkg, store))
    assert proc.returncode == 0, proc.stderr


def _made(store: Path, layer: str, writes: list[tuple[int, bytes]], *extra: str) -> dict:
    """A deployable version of ``layer`` holding ``writes`` over its base."""
    pkg = _package(store, layer, f"{layer}-{len(_versions(store, layer)) + 1}", *extra)
    apply_with_strata(Path(pkg["disk_path"]), writes)
    _finalize(store, pkg)
    return pkg


def _show(store: Path, layer: str) -> dict[str, Any]:
    return result_of(strata_json("layer", "show", layer, "--store", store))["layer"]


def _versions(store: Path, layer: str) -> list[str]:
    proc = strata("layer", "show", layer, "--store", store, "--json")
    if proc.returncode == NotFound.exit_code:
        return []
    return [v["name"] for v in _show(store, layer)["versions"]]


def _catalog(store: Path) -> tuple[Any, ...]:
    """Everything a refused delete must leave as it was."""
    layers = result_of(strata_json("layer", "list", "--store", store))["layers"]
    shown = [_show(store, row["name"]) for row in layers]
    history = result_of(strata_json("layer", "history", "--store", store))["history"]
    images = result_of(strata_json("image", "list", "--store", store))["images"]
    return shown, history, images


def _stats(store: Path) -> dict[str, Any]:
    return result_of(strata_json("store", "stats", "--store", store))


def _gc_and_verify(store: Path) -> dict[str, Any]:
    gc = result_of(strata_json("store", "gc", "--store", store))
    verified = result_of(strata_json("store", "verify", "--store", store))
    assert verified["clean"], verified
    return gc


def _export(store: Path, image: str, dest: Path) -> Path:
    proc = strata("image", "export", image, dest, "--target", "raw", "--store", store)
    assert proc.returncode == 0, proc.stderr
    return dest


def _delete(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return strata("layer", "delete", *args, "--store", store)


def _refused(store: Path, *args: str) -> str:
    """The refusal of ``layer delete ARGS``: exit 8, nothing changed; its message."""
    before = _catalog(store)
    proc = _delete(store, *args)
    assert proc.returncode == StateError.exit_code, (proc.stdout, proc.stderr)
    assert "nothing was deleted" in proc.stderr
    assert _catalog(store) == before
    return proc.stderr


A = [(MiB + 4096, random_bytes(512 << 10, 1))]  # app:1
B = [(20 * MiB, random_bytes(MiB, 2))]  # app:2, on app:1


def test_deleting_an_unused_version_and_gc_reclaims_only_its_chunks(store: Path) -> None:
    """app:2 is used by nothing: deleted, gc frees the chunks only it held; an image of
    app:1 published before stays whole."""
    _made(store, "app", A)
    _made(store, "app", B)
    assert _versions(store, "app") == ["1", "2"]
    assert strata("image", "publish", "--name", "img", "--os", "win", "--app", "app:1",
                  "--store", store).returncode == 0  # fmt: skip
    expected = expected_copy(store.parent / "os.raw", store.parent / "expected.raw")
    apply_to_raw(expected, A)
    before = _export(store, "img", store.parent / "before.raw")
    assert compare_with_qemu(expected, before, "raw") == 0
    stats = _stats(store)

    events = strata_json("layer", "delete", "app:2", "--comment", "not needed", "--store", store)
    result = result_of(events)
    assert result["layer"] == "app" and not result["layer_deleted"]
    assert [(v["version"], v["state"], v["base"]) for v in result["versions"]] == [
        ("2", "deployable", "1")
    ]
    assert result["versions"][0]["stack"] == [["win", "1"], ["app", "1"]]
    assert result["reclaim_at_most"] > 0 and "strata store gc" in result["reclaim"]
    assert _versions(store, "app") == ["1"]
    latest = result_of(strata_json("layer", "list", "--store", store))["layers"]
    assert {row["name"]: row["latest"] for row in latest} == {"win": "1", "app": "1"}
    last = result_of(strata_json("layer", "history", "app", "--store", store))["history"][-1]
    assert (last["operation"], last["version"], last["comment"]) == (
        "delete-version",
        "2",
        "not needed",
    )
    assert _stats(store)["stored_bytes"] == stats["stored_bytes"]  # gc has not run

    gc = _gc_and_verify(store)
    assert gc["chunks_removed"] > 0 and gc["pack_bytes_freed"] > 0
    after = _stats(store)
    # B is random: all of its MiB was stored, and only app:2 held it.
    assert stats["stored_bytes"] - after["stored_bytes"] >= MiB
    assert after["pack_bytes"] < stats["pack_bytes"] and after["versions"] == 2
    again = _export(store, "img", store.parent / "after.raw")
    assert compare_with_qemu(expected, again, "raw") == 0
    assert qemu_img("compare", "-f", "raw", "-F", "raw", before, again).returncode == 0


def test_images_outlive_every_layer_they_were_published_from(store: Path) -> None:
    """An image's manifest names its chunks itself: with every layer deleted and gc run, it
    exports the same disk; deleting it too leaves gc nothing to keep."""
    _made(store, "app", A)
    _made(store, "app", B)
    assert strata("image", "publish", "--name", "img", "--os", "win", "--app", "app",
                  "--store", store).returncode == 0  # fmt: skip
    expected = expected_copy(store.parent / "os.raw", store.parent / "expected.raw")
    apply_to_raw(expected, A + B)
    with_layers = _stats(store)

    result = result_of(strata_json("layer", "delete", "app", "--store", store))
    assert result["layer_deleted"] and [v["version"] for v in result["versions"]] == ["1", "2"]
    assert strata("layer", "delete", "win", "--store", store).returncode == 0
    assert result_of(strata_json("layer", "list", "--store", store))["layers"] == []
    assert _gc_and_verify(store)["manifests_removed"] == 3  # the image uses every chunk
    assert _stats(store)["stored_bytes"] == with_layers["stored_bytes"]
    exported = _export(store, "img", store.parent / "img.raw")
    assert compare_with_qemu(expected, exported, "raw") == 0

    deleted = result_of(strata_json("image", "delete", "img", "--comment", "old", "--store", store))
    assert deleted["image"] == "img" and "strata store gc" in deleted["reclaim"]
    assert result_of(strata_json("image", "list", "--store", store))["images"] == []
    assert strata("image", "export", "img", store.parent / "x.raw", "--target", "raw",
                  "--store", store).returncode == NotFound.exit_code  # fmt: skip
    last = result_of(strata_json("layer", "history", "--store", store))["history"][-1]
    assert (last["operation"], last["image"], last["comment"]) == ("delete-image", "img", "old")
    gc = _gc_and_verify(store)
    assert gc["chunks_removed"] > 0
    empty = _stats(store)
    assert (empty["chunks"], empty["stored_bytes"], empty["pack_files"]) == (0, 0, 0)


def test_an_old_version_goes_while_the_finalized_one_made_from_it_stays_whole(
    store: Path,
) -> None:
    """app:2 was finalized on app:1, so it holds app:1's content: app:1 may be deleted (the
    link becomes none), and after gc an image of app:2 still exports base + A + B. A
    version still being packaged on its base keeps that base."""
    _made(store, "app", A)
    _made(store, "app", B)
    result = result_of(strata_json("layer", "delete", "app:1", "--store", store))
    assert [v["version"] for v in result["versions"]] == ["1"]
    assert [(v["name"], v["base"]) for v in _show(store, "app")["versions"]] == [("2", None)]
    last = result_of(strata_json("layer", "history", "app", "--store", store))["history"][-1]
    assert last["operation"] == "delete-version" and last["details"]["detached"] == ["2"]
    _gc_and_verify(store)
    assert strata("image", "publish", "--name", "img2", "--os", "win", "--app", "app:2",
                  "--store", store).returncode == 0  # fmt: skip
    expected = expected_copy(store.parent / "os.raw", store.parent / "expected.raw")
    apply_to_raw(expected, A + B)
    exported = _export(store, "img2", store.parent / "img2.raw")
    assert compare_with_qemu(expected, exported, "raw") == 0

    _package(store, "app", "3")  # packaging on app:2, not finalized
    message = _refused(store, "app:2")
    assert "app:3 (packaging)" in message


def test_an_os_version_with_layers_on_it_is_refused(store: Path) -> None:
    """A deployable app version and a packaging one (its disk not finalized yet) were made on
    win:1; the OS layer also cannot go whole while layers belong to it."""
    _made(store, "app", A)
    _package(store, "pending")
    message = _refused(store, "win:1")
    assert "app:1 was packaged on win:1" in message
    assert "pending:1 (packaging) is packaged on win:1" in message
    whole = _refused(store, "win")
    assert "layer app belongs to it" in whole and "layer pending belongs to it" in whole
    assert strata("layer", "delete", "app", "--store", store).returncode == 0
    assert strata("layer", "delete", "pending", "--store", store).returncode == 0
    assert strata("layer", "delete", "win:1", "--store", store).returncode == 0


def test_a_prerequisite_app_version_is_refused(store: Path) -> None:
    """An app version another layer was packaged on (as a prerequisite) stays while it does."""
    _made(store, "runtime", A)
    _made(store, "app", B, "--app", "runtime")
    message = _refused(store, "runtime:1")
    assert "app:1 was packaged on runtime:1" in message
    assert _refused(store, "runtime")


def test_a_finalizing_version_is_refused_until_finalize_completes_it(store: Path) -> None:
    pkg = _package(store, "app")
    apply_with_strata(Path(pkg["disk_path"]), A)
    with Store(store) as st:  # as a finalize killed after it began to commit leaves it
        st.catalog.transition("app", "1", "finalizing")
    message = _refused(store, "app:1")
    assert "app:1: it is finalizing" in message and "run it again" in message
    assert _refused(store, "app")
    _finalize(store, pkg)
    assert _delete(store, "app:1").returncode == 0
    assert _versions(store, "app") == []


def test_a_version_being_written_is_a_conflict(store: Path) -> None:
    """A finalize (or an import) holds its claim on the version while it runs: a delete then
    is refused at once with nothing changed, and a finalize while a delete holds it too."""
    pkg = _package(store, "app")
    apply_with_strata(Path(pkg["disk_path"]), A)
    before = _catalog(store)
    with Store(store) as st, st.claim_version("app", "1"):
        proc = _delete(store, "app:1")
        whole = _delete(store, "app")
    for p in (proc, whole):
        assert p.returncode == Conflict.exit_code, p.stderr
        assert (
            "work on app:1 (an import, finalize or delete) is under way in another process"
            in p.stderr
        )
    assert _catalog(store) == before
    _finalize(store, pkg)


def test_delete_and_finalize_run_together(store: Path) -> None:
    """Started at once, one of them takes the version: either the delete goes first (the
    finalize finds no version or meets its claim) or the finalize completes the version
    (the delete meets its claim, or deletes the finished version). Never anything between."""
    for round_ in range(3):
        pkg = _package(store, "app", f"race-{round_}")
        apply_with_strata(Path(pkg["disk_path"]), A)
        cmd = [sys.executable, "-m", "strata"]
        finalize = subprocess.Popen(
            [*cmd, "finalize", "--disk", pkg["disk_path"], "--layer", "app",
             "--version", pkg["version"], "--store", str(store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        delete = _delete(store, f"app:{pkg['version']}")
        err = finalize.communicate(timeout=120)[1]
        finalized = finalize.returncode
        assert delete.returncode in (0, Conflict.exit_code), delete.stderr
        assert finalized in (0, Conflict.exit_code, NotFound.exit_code), err
        versions = {v["name"]: v["state"] for v in _show(store, "app")["versions"]}
        if delete.returncode == 0:
            assert pkg["version"] not in versions
        else:
            assert finalized == 0 and versions[pkg["version"]] == "deployable"
            assert _delete(store, f"app:{pkg['version']}").returncode == 0
    _gc_and_verify(store)


def test_abandoning_a_packaging_disk(store: Path) -> None:
    """A packaging version can be deleted: its disk is left where it is (and named), or
    removed with --remove-disk; the version name is free for a new packaging disk."""
    pkg = _package(store, "app")
    disk, iso = Path(pkg["disk_path"]), Path(pkg["iso"])
    result = result_of(strata_json("layer", "delete", "app:1", "--store", store))
    assert result["versions"][0]["state"] == "packaging"
    assert result["versions"][0]["packaging_disk"] == str(disk)
    assert result["left"] == [str(disk), str(iso)] and result["removed"] == []
    assert disk.exists() and iso.exists()
    text = strata("layer", "show", "app", "--store", store)
    assert text.returncode == 0 and "packaging" not in text.stdout

    again = _package(store, "app", "app-again", "--new-version", "1")
    assert again["version"] == "1"
    proc = _delete(store, "app:1", "--remove-disk", "--comment", "wrong installer")
    assert proc.returncode == 0, proc.stderr
    assert f"removed {again['disk_path']}, {again['iso']}" in proc.stdout
    assert not Path(again["disk_path"]).exists() and not Path(again["iso"]).exists()
    assert Path(again["base"]["path"]).exists()  # the base is a cache other disks share
    last = result_of(strata_json("layer", "history", "app", "--store", store))["history"][-1]
    assert last["comment"] == "wrong installer" and last["details"]["state"] == "packaging"

    third = _package(store, "app", "app-again")  # the name and the version are free again
    assert third["version"] == "1"
    apply_with_strata(Path(third["disk_path"]), A)
    _finalize(store, third)
    _gc_and_verify(store)


def test_remove_disk_spares_a_disk_another_version_now_uses(store: Path) -> None:
    """A disk path a packaging record names may since hold another version's disk (the
    first was removed by hand): --remove-disk leaves that one, with a warning."""
    first = _package(store, "app")
    Path(first["disk_path"]).unlink()
    Path(first["iso"]).unlink()
    second = _package(store, "other", "app")
    assert second["disk_path"] == first["disk_path"]
    events = strata_json("layer", "delete", "app:1", "--remove-disk", "--store", store)
    assert result_of(events)["removed"] == []
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any("another version's record names it" in w for w in warnings), events
    assert Path(second["disk_path"]).exists()


@pytest.mark.parametrize(
    "args, code, words",
    [
        (("layer", "delete", "nosuch"), NotFound.exit_code, "layer 'nosuch'"),
        (("layer", "delete", "win:9"), NotFound.exit_code, "version '9' of layer 'win'"),
        (("layer", "delete", "nosuch:1"), NotFound.exit_code, "layer 'nosuch'"),
        (("image", "delete", "nosuch"), NotFound.exit_code, "image 'nosuch'"),
        (("layer", "delete", "win:"), InvalidInput.exit_code, "NAME:VERSION"),
        (("image", "delete", "a/b"), InvalidInput.exit_code, "not allowed"),
    ],
)
def test_unknown_and_invalid_names(
    store: Path, args: tuple[str, ...], code: int, words: str
) -> None:
    before = _catalog(store)
    events = strata_json(*args, "--store", store)
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == code, events
    assert words in events[-1]["message"]
    assert _catalog(store) == before


def test_a_delete_between_plan_and_claim_stops_the_packaging_disk(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """packaging-disk create resolves its stack, then creates its version: an OS version
    deleted in between is found missing there, before any file is written."""
    plan = layer_ops._packaging_plan

    def plan_then_delete(st: Store, req: layer_ops.PackagingRequest) -> Any:
        found = plan(st, req)
        api.delete_version("win", "1", store=store)
        return found

    monkeypatch.setattr(layer_ops, "_packaging_plan", plan_then_delete)
    out = store.parent / "out"
    out.mkdir()
    request = api.PackagingRequest(layer="app", os="win", fmt="vhd", name="app", out=str(out))
    with pytest.raises(NotFound, match="version '1' of layer 'win'"):
        api.create_packaging_disk(request, store=store)
    assert list(out.iterdir()) == []
    assert [row["name"] for row in api.list_layers(store)] == ["win"]


def test_a_delete_while_the_packaging_disk_is_written_is_refused(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the version exists, before its packaging record does (the base is being
    written), the stack it recorded at creation protects its OS version."""
    write = layer_ops._write_packaging_disk
    refusals = []

    def delete_then_write(*args: Any) -> Any:
        with pytest.raises(StateError) as refused:
            api.delete_version("win", "1", store=store)
        refusals.append(refused.value.message)
        return write(*args)

    monkeypatch.setattr(layer_ops, "_write_packaging_disk", delete_then_write)
    out = store.parent / "out"
    out.mkdir()
    request = api.PackagingRequest(layer="app", os="win", fmt="vhd", name="app", out=str(out))
    pkg = api.create_packaging_disk(request, store=store)
    assert refusals and "app:1 (packaging) is packaged on win:1" in refusals[0]
    assert Path(pkg["disk_path"]).exists()
