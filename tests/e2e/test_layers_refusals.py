"""Issue 7: refusals leave nothing in the store; every documented exit code is produced."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from strata.cli import main as cli_main
from strata.errors import (
    Conflict,
    CorruptImage,
    IntegrityError,
    InvalidInput,
    NotFound,
    NotReady,
    StateError,
    Unsupported,
)
from strata.ops.packaging import record_path
from strata.store import Store

from support.images import MiB, write_sparse_raw
from support.layers import (
    apply_to_raw,
    apply_with_strata,
    compare_with_qemu,
    qemu_io_write,
    sigkill_after,
)
from support.tools import qemu_img, result_of, strata, strata_json


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refusals")
    os_raw = write_sparse_raw(root / "os.raw", 64 * MiB, [(0, MiB), (40 * MiB, 2 * MiB)], seed=4)
    other = write_sparse_raw(root / "other.raw", 64 * MiB, [(0, MiB)], seed=5)
    store = root / "store"
    for name, image in (("winA", os_raw), ("winB", other)):
        assert (
            strata("os", "import", name, image, "--version", "1", "--store", store).returncode == 0
        )
    return store


def _package(
    store: Path, layer: str, *, os_layer: str = "winA", fmt: str = "vhd", out: Path | None = None
) -> dict:
    out = out or store.parent / f"out-{layer}"
    out.mkdir(exist_ok=True)
    return result_of(
        strata_json(
            "packaging-disk",
            "create",
            "--layer",
            layer,
            "--os",
            os_layer,
            "--format",
            fmt,
            "--name",
            layer,
            "--out",
            out,
            "--store",
            store,
        )
    )


def _finalize(store: Path, disk: str, layer: str, version: str = "1") -> int:
    return strata(
        "finalize", "--disk", disk, "--layer", layer, "--version", version, "--store", store
    ).returncode


def _state(store: Path, layer: str, version: str = "1") -> str:
    with Store(store) as st:
        return st.catalog.version(layer, version)["state"]


def _verify_clean(store: Path) -> None:
    result = result_of(strata_json("store", "verify", "--store", store))
    assert result["clean"], result


def test_second_finalize_is_refused(store: Path) -> None:
    pkg = _package(store, "twice")
    apply_with_strata(Path(pkg["disk_path"]), [(MiB, b"\x07" * 4096)])
    assert _finalize(store, pkg["disk_path"], "twice") == 0
    proc = strata(
        "finalize",
        "--disk",
        pkg["disk_path"],
        "--layer",
        "twice",
        "--version",
        "1",
        "--store",
        store,
    )
    assert proc.returncode == StateError.exit_code
    assert "deployable" in proc.stderr


@pytest.mark.parametrize(
    "fmt, code, words",
    [
        ("vhd", StateError.exit_code, "was modified"),  # VHD has no parent content id
        ("vmdk", IntegrityError.exit_code, "parentCID"),  # qemu's write bumps the CID
    ],
)
def test_modified_base_is_refused(store: Path, fmt: str, code: int, words: str) -> None:
    layer = f"modbase-{fmt}"
    pkg = _package(store, layer, fmt=fmt)
    apply_with_strata(Path(pkg["disk_path"]), [(MiB, b"\x08" * 4096)])
    qemu_io_write(Path(pkg["base"]["path"]), {"vhd": "vpc"}.get(fmt, fmt), 2 * MiB, 4096, 0x66)
    proc = strata(
        "finalize", "--disk", pkg["disk_path"], "--layer", layer, "--version", "1", "--store", store
    )
    assert proc.returncode == code, proc.stderr
    assert words in proc.stderr
    assert _state(store, layer) == "packaging"
    _verify_clean(store)


def test_parent_that_is_not_the_recorded_base_is_refused(store: Path, tmp_path: Path) -> None:
    pkg = _package(store, "wrongparent", fmt="vhd")
    disk = Path(pkg["disk_path"])
    impostor = disk.parent / "impostor-base.vhd"
    assert strata("disk", "convert", "-O", "vhd", pkg["base"]["path"], impostor).returncode == 0
    disk.unlink()
    assert strata("disk", "create", "-O", "vhd", "-b", impostor, disk).returncode == 0
    proc = strata(
        "finalize", "--disk", disk, "--layer", "wrongparent", "--version", "1", "--store", store
    )
    assert proc.returncode == StateError.exit_code, proc.stderr
    assert "not the recorded base" in proc.stderr
    assert _state(store, "wrongparent") == "packaging"


def test_sigkilled_finalize_leaves_no_version_and_a_rerun_succeeds(store: Path) -> None:
    pkg = _package(store, "killed", fmt="vhdx")
    data = np.random.default_rng(3).integers(0, 256, 48 * MiB, dtype=np.uint8).tobytes()
    apply_with_strata(Path(pkg["disk_path"]), [(8 * MiB, data)])
    cmd = [
        sys.executable,
        "-m",
        "strata",
        "finalize",
        "--disk",
        pkg["disk_path"],
        "--layer",
        "killed",
        "--version",
        "1",
        "--store",
        str(store),
    ]
    rng = random.Random(7)
    killed = 0
    for _ in range(4):
        code = sigkill_after(cmd, rng.uniform(0.15, 0.45))
        state = _state(store, "killed")
        if code == 0 or state == "deployable":
            # Finished before the kill, or killed on its way out after the commit: nothing
            # left to test, but the store must be whole either way.
            _verify_clean(store)
            break
        killed += 1
        assert state in ("packaging", "finalizing")
        _verify_clean(store)
    assert killed >= 1, "finalize always finished before the kill; make the write set larger"
    if _state(store, "killed") != "deployable":
        assert _finalize(store, pkg["disk_path"], "killed") == 0
    assert _state(store, "killed") == "deployable"
    assert strata("store", "gc", "--store", store).returncode == 0
    _verify_clean(store)


def test_unknown_export_target_is_a_usage_error(store: Path, tmp_path: Path) -> None:
    proc = strata(
        "image", "export", "nothing", tmp_path / "x", "--target", "amiga", "--store", store
    )
    assert proc.returncode == 2 and "amiga" in proc.stderr


def test_template_naming_a_layer_of_another_os_is_refused(store: Path, tmp_path: Path) -> None:
    pkg = _package(store, "b-app", os_layer="winB")
    apply_with_strata(Path(pkg["disk_path"]), [(MiB, b"\x09" * 512)])
    assert _finalize(store, pkg["disk_path"], "b-app") == 0
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"name": "mixed", "os": "winA", "apps": ["b-app"]}))
    proc = strata("image", "publish", template, "--store", store)
    assert proc.returncode == InvalidInput.exit_code
    assert "belongs to OS layer 'winB'" in proc.stderr
    with Store(store) as st:
        assert all(img["name"] != "mixed" for img in st.catalog.images())


def test_independent_app_layers_need_a_file_level_merge(store: Path) -> None:
    """Independently packaged layers are merged at file level; with no FAT volume to merge
    in, two of them changing the same block are refused, disjoint blocks are combined."""
    for layer, offset in (("indep1", 5 * MiB), ("indep2", 5 * MiB), ("indep3", 9 * MiB)):
        pkg = _package(store, layer)
        apply_with_strata(Path(pkg["disk_path"]), [(offset, layer.encode() * 100)])
        assert _finalize(store, pkg["disk_path"], layer) == 0
    proc = strata(
        "image", "publish", "--name", "both", "--os", "winA", "--app", "indep1", "--app", "indep2",
        "--store", store,
    )  # fmt: skip
    assert proc.returncode == StateError.exit_code
    assert "file-level merge" in proc.stderr
    assert "outside the volumes merged at file level" in proc.stderr
    with Store(store) as st:
        assert all(img["name"] != "both" for img in st.catalog.images())
    merged = result_of(
        strata_json(
            "image", "publish", "--name", "disjoint", "--os", "winA", "--app", "indep1",
            "--app", "indep3", "--store", store,
        )
    )  # fmt: skip
    assert merged["merge"] == "file" and merged["conflicts"] == []
    assert merged["outside_blocks"] == 2 and merged["merged_blocks"] == 0
    expected = store.parent / "disjoint-expected.raw"
    shutil.copyfile(store.parent / "os.raw", expected)
    apply_to_raw(expected, [(5 * MiB, b"indep1" * 100), (9 * MiB, b"indep3" * 100)])
    out = store.parent / "disjoint.raw"
    exported = strata("image", "export", "disjoint", out, "--target", "raw", "--store", store)
    assert exported.returncode == 0, exported.stderr
    assert compare_with_qemu(expected, out, "raw") == 0


def test_platform_layer_decides_the_targets(store: Path, tmp_path: Path) -> None:
    out = store.parent / "out-plat"
    out.mkdir()
    pkg = result_of(
        strata_json(
            "packaging-disk",
            "create",
            "--layer",
            "xen-tools",
            "--kind",
            "platform",
            "--platform-type",
            "xenserver",
            "--purpose",
            "publish",
            "--os",
            "winA",
            "--format",
            "vhd",
            "--name",
            "plat",
            "--out",
            out,
            "--store",
            store,
        )
    )
    apply_with_strata(Path(pkg["disk_path"]), [(6 * MiB, b"\x0a" * 4096)])
    assert _finalize(store, pkg["disk_path"], "xen-tools") == 0
    assert (
        strata(
            "image",
            "publish",
            "--name",
            "plat-img",
            "--os",
            "winA",
            "--platform",
            "xen-tools",
            "--store",
            store,
        ).returncode
        == 0
    )
    ok = strata(
        "image", "export", "plat-img", tmp_path / "a.vhd", "--target", "xenserver", "--store", store
    )
    assert ok.returncode == 0
    refused = strata(
        "image", "export", "plat-img", tmp_path / "b.vhdx", "--target", "hyperv", "--store", store
    )
    assert refused.returncode == InvalidInput.exit_code and "--force" in refused.stderr
    assert not (tmp_path / "b.vhdx").exists()
    forced = strata(
        "image",
        "export",
        "plat-img",
        tmp_path / "b.vhdx",
        "--target",
        "hyperv",
        "--force",
        "--store",
        store,
    )
    assert forced.returncode == 0


def test_json_lines_are_valid(store: Path, tmp_path: Path) -> None:
    pkg = _package(store, "jsonl")
    apply_with_strata(Path(pkg["disk_path"]), [(MiB, b"\x0b" * 4096)])
    for args in (
        ["finalize", "--disk", pkg["disk_path"], "--layer", "jsonl", "--version", "1"],
        ["image", "publish", "--name", "jsonl-img", "--os", "winA", "--app", "jsonl"],
        ["image", "export", "jsonl-img", str(tmp_path / "j.vhdx"), "--target", "pvs"],
        ["image", "export", "jsonl-img", str(tmp_path / "k"), "--target", "raw"],
        ["layer", "list"],
    ):
        proc = strata(*args, "--store", store, "--json")
        assert proc.returncode == 0, proc.stderr
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        assert events and events[-1]["event"] == "result"
        assert {e["event"] for e in events} <= {"progress", "warning", "integrity", "result"}


# -- every documented exit code -------------------------------------------------------------
def test_exit_1_compare_differs(tmp_path: Path) -> None:
    a = write_sparse_raw(tmp_path / "a.raw", MiB, [(0, 512)], seed=1)
    b = write_sparse_raw(tmp_path / "b.raw", MiB, [(0, 512)], seed=2)
    assert strata("disk", "compare", a, b).returncode == 1


def test_exit_4_missing_layer(store: Path) -> None:
    proc = strata("image", "publish", "--name", "x", "--os", "nope", "--store", store)
    assert proc.returncode == NotFound.exit_code


def test_exit_5_corrupt_image(tmp_path: Path) -> None:
    bad = tmp_path / "bad.vhdx"
    qemu_img("create", "-q", "-f", "vhdx", bad, "64M")
    with open(bad, "r+b") as f:  # both headers' checksums broken
        for offset in (64 << 10, 128 << 10):
            f.seek(offset + 8)
            f.write(b"\xff" * 8)
    assert strata("disk", "info", bad).returncode == CorruptImage.exit_code


def test_exit_6_unsupported(tmp_path: Path) -> None:
    q = tmp_path / "x.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", q, "1M")
    assert strata("disk", "info", q).returncode == Unsupported.exit_code


def test_exit_7_corrupt_chunk_on_export(store: Path, tmp_path: Path) -> None:
    private = tmp_path / "store"
    image = write_sparse_raw(tmp_path / "os.raw", 8 * MiB, [(0, 2 * MiB)], seed=9)
    assert (
        strata("os", "import", "flip", image, "--version", "1", "--store", private).returncode == 0
    )
    assert (
        strata("image", "publish", "--name", "flip", "--os", "flip", "--store", private).returncode
        == 0
    )
    pack = sorted((private / "packs").glob("*.pack"))[0]
    with open(pack, "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = strata(
        "image", "export", "flip", tmp_path / "o.raw", "--target", "raw", "--store", private
    )
    assert proc.returncode == IntegrityError.exit_code, proc.stderr
    assert not (tmp_path / "o.raw").exists()


def test_exit_10_store_busy(store: Path) -> None:
    with Store(store):  # a shared lock held: gc needs it exclusively
        proc = strata("store", "gc", "--wait", "0.3", "--store", store)
    assert proc.returncode == Conflict.exit_code


@pytest.mark.parametrize(
    "error, code", [(NotReady(what="pending reboot"), 9), (RuntimeError("boom"), 70)]
)
def test_exit_9_and_70_mapping(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, error: Exception, code: int
) -> None:
    """NotReady is raised by the finalize integrity gate (a later issue); 70 is a bug."""

    def fail(*_args: object, **_kw: object) -> None:
        raise error

    monkeypatch.setattr("strata.ops.disk.info", fail)
    assert cli_main.run(["disk", "info", "whatever"]) == code
    err = capsys.readouterr().err
    assert err.startswith("strata: ") and "Traceback" not in err


def test_each_run_starts_in_text_mode(capsys: pytest.CaptureFixture) -> None:
    """A controller calling ``run`` twice in one process: ``--json`` of the first does not
    turn the second's error into JSON on stdout."""
    assert cli_main.run(["disk", "formats", "--json"]) == 0
    capsys.readouterr()
    assert cli_main.run(["disk", "info", "/nonexistent/disk.raw"]) == NotFound.exit_code
    out, err = capsys.readouterr()
    assert err.startswith("strata: ") and out == ""


@pytest.mark.parametrize(
    "args",
    [
        ["os", "import", "good", "{dir}/os.raw", "--version", "1:2"],
        ["os", "import", "good@5", "{dir}/os.raw", "--version", "1"],
        ["packaging-disk", "create", "--layer", "pkg:x", "--os", "winA", "--format", "vhd",
         "--name", "pkgx", "--out", "{dir}"],
        ["packaging-disk", "create", "--layer", "pkgx", "--new-version", "a@b", "--os", "winA",
         "--format", "vhd", "--name", "pkgx", "--out", "{dir}"],
        ["image", "publish", "--name", "../../etc/x", "--os", "winA"],
    ],
)  # fmt: skip
def test_names_with_reserved_characters_are_refused(store: Path, args: list[str]) -> None:
    """NAME:VERSION and NAME@PRIORITY references could never name them again."""
    before = result_of(strata_json("layer", "list", "--store", store))
    proc = strata(*[a.format(dir=store.parent) for a in args], "--store", store)
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert "is not allowed" in proc.stderr and ": @ / \\" in proc.stderr
    assert result_of(strata_json("layer", "list", "--store", store)) == before
    assert not (store.parent / "pkgx.vhd").exists()
    with Store(store) as st:
        assert all("/" not in img["name"] for img in st.catalog.images())


def _layer_versions(store: Path, layer: str) -> list[str] | None:
    with Store(store) as st:
        try:
            return [v["name"] for v in st.catalog.layer(layer)["versions"]]
        except NotFound:
            return None


def _create_args(store: Path, layer: str, name: str, out: Path, *extra: str) -> list[str]:
    return [
        "packaging-disk", "create", "--layer", layer, "--os", "winA", "--format", "vhd",
        "--name", name, "--out", str(out), "--store", str(store), *extra,
    ]  # fmt: skip


def test_an_existing_job_iso_is_refused_and_kept(store: Path, tmp_path: Path) -> None:
    (tmp_path / "d2-job.iso").write_bytes(b"precious\n")
    proc = strata(*_create_args(store, "isokeep", "d2", tmp_path))
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert "d2-job.iso already exists" in proc.stderr
    assert (tmp_path / "d2-job.iso").read_bytes() == b"precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d2-job.iso"]
    assert _layer_versions(store, "isokeep") is None


@pytest.mark.parametrize(
    "layer, extra, words",
    [
        ("dup", ["--new-version", "1"], "already has a version '1'"),
        ("dup", ["-o", "block_size=3"], "block size 3"),
        ("fresh6", ["-o", "subformat=bad"], "subformat='bad'"),
        ("fresh7", ["-o", "block_size=3"], "block size 3"),
        ("dup", ["--base-version", "9"], "version '9' of layer 'dup'"),
    ],
)
def test_a_failed_packaging_disk_create_leaves_nothing(
    store: Path, tmp_path: Path, layer: str, extra: list[str], words: str
) -> None:
    """Not even the cached base is written: options are checked before anything is."""
    if layer == "dup" and _layer_versions(store, layer) is None:
        _package(store, layer)
    before = _layer_versions(store, layer)
    proc = strata(*_create_args(store, layer, "n11", tmp_path, *extra))
    assert proc.returncode in (InvalidInput.exit_code, NotFound.exit_code), proc.stderr
    assert words in proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert _layer_versions(store, layer) == before


def test_import_of_an_existing_version_is_invalid_input(store: Path) -> None:
    proc = strata(
        "os", "import", "winA", store.parent / "os.raw", "--version", "1", "--store", store
    )
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert "version '1' of 'winA' already exists (deployable)" in proc.stderr


def test_a_version_being_written_is_claimed(store: Path) -> None:
    """While one process writes a version (import, finalize), another is refused before it
    reads or stores anything; a killed writer's claim goes with it (flock)."""
    pkg = _package(store, "claimed")
    apply_with_strata(Path(pkg["disk_path"]), [(MiB, b"\x0c" * 4096)])
    with Store(store) as st:
        packs = st.stats()["pack_bytes"]
        with st.claim_version("claimed", "1"), st.claim_version("winC", "1"):
            imported = strata(
                "os", "import", "winC", store.parent / "os.raw", "--version", "1", "--store", store
            )
            finalized = _finalize(store, pkg["disk_path"], "claimed")
        assert st.stats()["pack_bytes"] == packs
    assert imported.returncode == Conflict.exit_code, imported.stderr
    assert (
        "work on winC:1 (an import, finalize or delete) is under way in another process"
        in imported.stderr
    )
    assert finalized == Conflict.exit_code
    assert _state(store, "claimed") == "packaging"
    assert _finalize(store, pkg["disk_path"], "claimed") == 0


@pytest.mark.parametrize(
    "content, words",
    [
        ("[" * 100000, "JSON nested too deeply"),
        (None, "is a directory, not a JSON file"),
        ("{", "is not JSON: Expecting property name"),
    ],
)
def test_a_bad_template_is_named(
    store: Path, tmp_path: Path, content: str | None, words: str
) -> None:
    template = tmp_path / "t.json"
    if content is None:
        template.mkdir()
    else:
        template.write_text(content)
    proc = strata("image", "publish", template, "--store", store)
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert f"template {template}" in proc.stderr and words in proc.stderr
    assert "Errno" not in proc.stderr and "Error" not in proc.stderr


def test_publishing_an_existing_image_name_writes_nothing(store: Path) -> None:
    args = ("image", "publish", "--name", "twice-img", "--os", "winA", "--store", store)
    assert strata(*args).returncode == 0
    manifests = sorted((store / "manifests").glob("*/*.manifest"))
    proc = strata(*args)
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert "image 'twice-img' already exists" in proc.stderr
    assert sorted((store / "manifests").glob("*/*.manifest")) == manifests


def _snapshot(store: Path) -> dict:
    """Layers with their versions and states, images, and what the packs and manifests hold."""
    with Store(store) as st:
        layers = {
            row["name"]: [
                (v["name"], v["state"]) for v in st.catalog.layer(row["name"])["versions"]
            ]
            for row in st.catalog.layers()
        }
        images = [row["name"] for row in st.catalog.images()]
        packs = st.stats()["pack_bytes"]
    manifests = sorted(p.name for p in (store / "manifests").rglob("*.manifest"))
    return {"layers": layers, "images": images, "packs": packs, "manifests": manifests}


def _dup_cases(store: Path, out: Path) -> dict[str, list[object]]:
    template = out.parent / "dup-template.json"
    template.write_text(json.dumps({"name": "dupimg", "os": "winA", "apps": ["dupa", "dupa:1"]}))
    publish = ["image", "publish", "--name", "dupimg", "--os", "winA", "--store", store]
    return {
        "--app twice": _create_args(store, "dupnew", "d", out, "--app", "dupa", "--app", "dupa"),
        "--app in two versions": _create_args(
            store, "dupnew", "d", out, "--app", "dupa:1", "--app", "dupa"
        ),
        "--layer also an --app": _create_args(store, "dupa", "d", out, "--app", "dupa"),
        "publish --app twice": [*publish, "--app", "dupa", "--app", "dupa@500"],
        "publish template": ["image", "publish", template, "--store", store],
    }


@pytest.mark.parametrize(
    "case, given",
    [
        ("--app twice", "(--app dupa, --app dupa)"),
        ("--app in two versions", "(--app dupa:1, --app dupa)"),
        ("--layer also an --app", "(--app dupa, --layer dupa)"),
        ("publish --app twice", "(--app dupa, --app dupa)"),
        (
            "publish template",
            "dup-template.json: layer 'dupa' is given twice (apps dupa, apps dupa:1)",
        ),
    ],
)
def test_a_layer_given_twice_is_refused_before_any_work(
    store: Path, tmp_path: Path, case: str, given: str
) -> None:
    if _layer_versions(store, "dupa") is None:
        pkg = _package(store, "dupa")
        apply_with_strata(Path(pkg["disk_path"]), [(3 * MiB, b"\x0d" * 4096)])
        assert _finalize(store, pkg["disk_path"], "dupa") == 0
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot(store)
    proc = strata(*_dup_cases(store, out)[case])
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and given in lines[0], proc.stderr
    assert "layer 'dupa' is given twice" in lines[0]
    assert list(out.iterdir()) == []  # not even the cached base
    assert _snapshot(store) == before


def test_a_template_made_in_python_is_checked_too(store: Path) -> None:
    from strata import api

    tpl = api.Template("dupimg", "winA", apps=(api.AppRef("dupx"), api.AppRef("dupx:2", 7)))
    with pytest.raises(
        InvalidInput, match=r"layer 'dupx' is given twice \(apps dupx, apps dupx:2\)"
    ):
        api.publish(tpl, store=store)


def _damaged_stream_vmdk(tmp_path: Path) -> Path:
    """A streamOptimized VMDK (qemu-img) whose grains are damaged half-way: it opens, and
    reading fails only once the import has created its layer and version."""
    raw = write_sparse_raw(tmp_path / "r.raw", 16 * MiB, [(0, 16 * MiB)], seed=6)
    vmdk = tmp_path / "so.vmdk"
    qemu_img(
        "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk
    )
    with open(vmdk, "r+b") as f:
        f.seek(vmdk.stat().st_size // 2)
        f.write(bytes(4096))
    return vmdk


@pytest.mark.parametrize("layer", ["brokenos", "winA"], ids=["new layer", "new version"])
def test_a_failed_os_import_leaves_the_catalog_as_it_was(
    store: Path, tmp_path: Path, layer: str
) -> None:
    damaged = _damaged_stream_vmdk(tmp_path)
    before = _snapshot(store)["layers"]
    listed = result_of(strata_json("layer", "list", "--store", store))["layers"]
    proc = strata("os", "import", layer, damaged, "--version", "9", "--store", store)
    assert proc.returncode == CorruptImage.exit_code, proc.stderr
    assert proc.stderr.startswith(f"strata: {damaged}: corrupt compressed grain")
    assert _snapshot(store)["layers"] == before
    assert result_of(strata_json("layer", "list", "--store", store))["layers"] == listed
    history = result_of(strata_json("layer", "history", "--store", store))["history"]
    assert [history[-1][k] for k in ("operation", "layer", "version")] == [
        "discard-version",
        layer,
        "9",
    ]
    _verify_clean(store)
    good = store.parent / "os.raw"  # the same name and version import once the image is good
    assert strata("os", "import", layer, good, "--version", "9", "--store", store).returncode == 0
    assert _state(store, layer, "9") == "deployable"


DAMAGED_MARKERS = {
    "not JSON": b"{garbage",
    "empty": b"",
    "not UTF-8": b"\xff\xfe{",
    "not an object": b"[1]",
    "a field of the wrong type": b'{"path": 5, "format": "vmdk", "stack": [], "fingerprint": []}',
}


def _pkg_args(store: Path, layer: str, out: Path) -> list[object]:
    return [
        "packaging-disk", "create", "--layer", layer, "--os", "winA", "--format", "vmdk",
        "--name", layer, "--out", out, "--store", store,
    ]  # fmt: skip


def _base_of(out: Path) -> tuple[Path, Path]:
    (base,) = out.glob("strata-base-*.vmdk")
    return base, Path(f"{base}.json")


@pytest.mark.parametrize("damage", list(DAMAGED_MARKERS))
def test_a_damaged_base_description_is_rebuilt(store: Path, tmp_path: Path, damage: str) -> None:
    """The cached base's description (strata-base-*.json) is a cache: damaged, it is rebuilt
    from the packaging record of a disk made on the same, unchanged base (so that disk still
    finalizes), with a warning naming it; without such a record the base is written again."""
    out = tmp_path / "out"
    out.mkdir()
    tag = damage.replace(" ", "")[:10].lower()
    first = result_of(strata_json(*_pkg_args(store, f"mk{tag}", out)))
    base, marker = _base_of(out)
    described, base_bytes = marker.read_bytes(), base.read_bytes()
    marker.write_bytes(DAMAGED_MARKERS[damage])

    proc = strata(*_pkg_args(store, f"mk{tag}b", out))
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"strata: warning: {marker} was damaged (")
    assert line.endswith(f"); rebuilt it from the record of mk{tag}:1")
    assert marker.read_bytes() == described and base.read_bytes() == base_bytes
    assert qemu_img("compare", "-f", "raw", "-F", "vmdk", store.parent / "os.raw",
                    out / f"mk{tag}b.vmdk").returncode == 0  # fmt: skip
    apply_with_strata(Path(first["disk_path"]), [(MiB, b"\x0e" * 4096)])
    assert _finalize(store, first["disk_path"], f"mk{tag}") == 0  # its base is still its base

    marker.write_bytes(DAMAGED_MARKERS[damage])
    os.utime(base, ns=(1, 1))  # changed since: no record describes it any more
    proc = strata(*_pkg_args(store, f"mk{tag}c", out))
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"strata: warning: {marker} is damaged (")
    assert line.endswith(f"); writing the base {base} again")
    assert json.loads(marker.read_bytes())["fingerprint"] != json.loads(described)["fingerprint"]
    assert qemu_img("compare", "-f", "raw", "-F", "vmdk", store.parent / "os.raw",
                    out / f"mk{tag}c.vmdk").returncode == 0  # fmt: skip


def test_the_default_version_is_one_more_than_the_highest_number(
    store: Path, tmp_path: Path
) -> None:
    """A version named by hand (here 2, while the layer had none) is not chosen again, and a
    name that is not a number does not count."""
    versions = []
    for name, extra in (
        ("n2", ["--new-version", "2"]),
        ("n3", []),
        ("nb", ["--new-version", "beta"]),
        ("n4", []),
    ):
        made = strata(*_create_args(store, "numbered", name, tmp_path, *extra), "--json")
        assert made.returncode == 0, made.stderr
        versions.append(json.loads(made.stdout.splitlines()[-1])["version"])
    assert versions == ["2", "3", "beta", "4"]
    assert _layer_versions(store, "numbered") == versions


@pytest.mark.parametrize("layer", ["racing-new", "racing-existing"])
def test_concurrent_packaging_disks_get_distinct_default_versions(
    store: Path, tmp_path: Path, layer: str
) -> None:
    """The default is chosen in the transaction that creates the version (and the layer,
    when new), so commands started together neither collide nor fail."""
    if layer == "racing-existing":
        _package(store, layer)
    outs = [tmp_path / f"out{i}" for i in range(4)]
    for out in outs:
        out.mkdir()
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "strata", *_create_args(store, layer, f"r{i}", out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, out in enumerate(outs)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, [err for _, err in outputs]
    versions = sorted(
        out.split(f"packaging disk for {layer}:")[1].split(":")[0] for out, _ in outputs
    )
    first = 2 if layer == "racing-existing" else 1
    assert versions == [str(n) for n in range(first, first + 4)]
    assert sorted(_layer_versions(store, layer) or []) == [str(n) for n in range(1, first + 4)]


def test_packaging_disks_made_together_in_one_directory_share_one_base(
    store: Path, tmp_path: Path
) -> None:
    """The base is looked for and written under a lock on the directory: written once, never
    read half written (qemu-img compares each disk, through its base, with the OS disk)."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "strata", *map(str, _pkg_args(store, f"shared{i}", tmp_path)),
             "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(4)
    ]  # fmt: skip
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, [err for _, err in outputs]
    bases = {json.dumps(json.loads(out.splitlines()[-1])["base"]) for out, _ in outputs}
    assert len(bases) == 1 and len(list(tmp_path.glob("strata-base-*.vmdk"))) == 1
    for i in range(4):
        disk = tmp_path / f"shared{i}.vmdk"
        assert qemu_img("compare", "-f", "raw", "-F", "vmdk", store.parent / "os.raw",
                        disk).returncode == 0  # fmt: skip


@pytest.mark.parametrize(
    "fmt, option, words",
    [
        ("vhdx", "block_size=3", "vhdx block_size 3 must be a power of two"),
        ("vhd", "block_size=3", "block size 3 must be a power of two"),
        ("vhd", "azure=on", "a differencing VHD cannot also be fixed"),
        ("vmdk", "subformat=streamOptimized", "a VMDK child must be monolithicSparse"),
        ("vmdk", "compression_level=12", "compression_level must be 0-9, not 12"),
    ],
)
def test_an_option_only_the_writer_checks_is_refused_before_the_base_is_written(
    store: Path, tmp_path: Path, fmt: str, option: str, words: str
) -> None:
    before = _snapshot(store)
    args = _create_args(store, "optcheck", "o", tmp_path, "-o", option)
    proc = strata(*[fmt if a == "vhd" else a for a in args])
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert proc.stderr.startswith(f"strata: {words}") and len(proc.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    assert _snapshot(store) == before


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--platform", "winB"], "--platform 'winB' is an OS layer, not a platform layer; give"),
        (["--app", "winB"], "--app 'winB' is an OS layer, not an app layer; give it as --os"),
    ],
)
def test_a_layer_of_another_kind_is_refused_in_its_place(
    store: Path, tmp_path: Path, extra: list[str], words: str
) -> None:
    """packaging-disk create checks each layer's kind as image publish does."""
    proc = strata(*_create_args(store, "kinds", "k1", tmp_path, *extra))
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert words in proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert _layer_versions(store, "kinds") is None
    publish = ["image", "publish", "--name", "kinds", "--os", "winA", *extra, "--store", store]
    refused = strata(*publish)
    assert refused.returncode == InvalidInput.exit_code and words in refused.stderr


@pytest.mark.parametrize(
    "tag, damage, words",
    [
        ("truncated", lambda raw: raw[: len(raw) // 2], "not JSON"),
        ("array", lambda raw: b"[1, 2]", "not an object"),
        (
            "type",
            lambda raw: raw.replace(b'"sector_size": 512', b'"sector_size": "512"'),
            "sector_size",
        ),
        (
            "base",
            lambda raw: raw.replace(b'"fingerprint": [', b'"fingerprint": "x", "was": ['),
            "base.fingerprint",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v and "." not in v else "",
)
def test_a_damaged_packaging_record_is_named_not_a_crash(
    store: Path, tag: str, damage: Callable[[bytes], bytes], words: str
) -> None:
    """The store's record of a packaging disk, damaged: finalize says which record and what
    is wrong (exit 7), the version stays packaging; deleting it lets the name be used again."""
    layer = f"record-{tag}"
    pkg = _package(store, layer)
    with Store(store) as st:
        path = Path(record_path(st, layer, "1"))
    raw = path.read_bytes()
    damaged = damage(raw)
    assert damaged != raw
    path.write_bytes(damaged)
    proc = strata("finalize", "--disk", pkg["disk_path"], "--layer", layer, "--version", "1",
                  "--store", store)  # fmt: skip
    assert proc.returncode == IntegrityError.exit_code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"the packaging record of {layer}:1" in proc.stderr and words in proc.stderr
    assert _state(store, layer) == "packaging"
    assert strata("layer", "delete", f"{layer}:1", "--store", store).returncode == 0
    assert _package(store, layer, out=store.parent / f"again-{layer}")["version"] == "1"
