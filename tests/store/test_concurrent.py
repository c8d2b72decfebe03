"""Four processes ingest overlapping data into one store at the same time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from strata.errors import Conflict, InvalidInput
from strata.store import ZERO_ID, Store, chunk_id

from support.images import write_sparse_raw
from support.store_tools import MiB, ingest_cmd, physical_copies, piece
from support.tools import result_of, strata_json

SHARED = [501, 502, 503]
SIZE = 4 * MiB


def test_four_writers_overlapping(tmp_path: Path) -> None:
    root = tmp_path / "s"
    Store.init(root).close()
    procs = [
        subprocess.Popen(
            ingest_cmd(root, f"layer{n}", "v1", [*SHARED, 600 + n], SIZE),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    results = [(*p.communicate(), p.returncode) for p in procs]
    assert all(code == 0 and out.split()[-1] == "committed" for out, _, code in results), results
    report = result_of(strata_json("store", "verify", "--store", root))
    assert report["clean"] and report["manifests_checked"] == 4
    shared_ids = {
        chunk_id(data[i : i + 65536])
        for seed in SHARED
        for data in [piece(seed, SIZE)]
        for i in range(0, SIZE, 65536)
    } - {ZERO_ID}
    shared_ids.discard(chunk_id(bytes(65536)))
    with Store(root) as store:
        indexed = {r[0] for r in store.db.execute("SELECT id FROM chunks")}
    assert shared_ids <= indexed
    before = physical_copies(root)
    duplicated = sum(1 for cid in shared_ids if before[cid] > 1)
    print(f"shared chunks stored more than once before gc: {duplicated} of {len(shared_ids)}")
    result_of(strata_json("store", "gc", "--store", root))
    after = physical_copies(root)
    assert all(after[cid] == 1 for cid in shared_ids)
    assert max(after.values()) == 1
    assert result_of(strata_json("store", "verify", "--store", root))["clean"]
    with Store(root) as store:
        for n in range(4):
            version = store.catalog.version(f"layer{n}", "v1")
            rows = store.get_manifest(bytes.fromhex(version["manifest"])).table("chunks")
            got = b"".join(store.get_many(rows["id"].tolist(), rows["length"].tolist()))
            assert got == b"".join(piece(s, SIZE) for s in [*SHARED, 600 + n])


def test_four_imports_of_one_version_copy_it_once(tmp_path: Path) -> None:
    """One import wins; the others fail before copying anything: Conflict while it runs,
    'already exists' once it is done. No pack holds bytes no index row points at."""
    image = write_sparse_raw(tmp_path / "os.raw", 96 * MiB, [(0, 48 * MiB)], seed=11)
    root = tmp_path / "s"
    Store.init(root).close()
    cmd = [sys.executable, "-m", "strata", "os", "import", "win", str(image), "--version", "1"]
    procs = [
        subprocess.Popen([*cmd, "--store", str(root)], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(p.wait(), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and set(codes[1:]) <= {Conflict.exit_code, InvalidInput.exit_code}
    for code, err in results:
        if code == Conflict.exit_code:
            assert (
                "work on win:1 (an import, finalize or delete) is under way in another process"
                in err
            )
        elif code == InvalidInput.exit_code:
            assert "version '1' of 'win' already exists (deployable)" in err
    stats = result_of(strata_json("store", "stats", "--store", root))
    assert stats["reclaimable_bytes"] == 0 and stats["versions"] == 1, stats
    assert not list((root / "tmp").iterdir())  # the claim went with its import
