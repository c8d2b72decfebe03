"""A small ISO9660 + Joliet disc carrying a job descriptor for the packaging machine (pycdlib)."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pycdlib

from strata.blockdev.rawfile import create_file

JOB_FILE_ISO = "/JOB.JSON;1"
JOB_FILE_JOLIET = "/job.json"


def write_job_iso(path: str, job: dict[str, Any], volume_id: str = "STRATA_JOB") -> None:
    """Write ``job`` as job.json on a fresh ISO at ``path`` (replaced atomically)."""
    payload = json.dumps(job, indent=1, sort_keys=True).encode()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, vol_ident=volume_id[:32])
    iso.add_fp(io.BytesIO(payload), len(payload), JOB_FILE_ISO, joliet_path=JOB_FILE_JOLIET)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with os.fdopen(create_file(tmp, f"create {path}"), "wb") as f:
            iso.write_fp(f)
        os.replace(tmp, path)
    finally:
        iso.close()
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_job_iso(path: str) -> dict[str, Any]:
    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path=JOB_FILE_JOLIET)
        return json.loads(out.getvalue())
    finally:
        iso.close()
