"""Running the independent oracles (qemu-img, qemu-io, libyal, fsck…) and strata itself."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def require(tool: str) -> str:
    """Path of ``tool``; in CI a missing tool fails (make test installs it), elsewhere it skips."""
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.path.exists(p)), None
    )
    if path:
        return path
    message = f"{tool} is not installed (make test installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError("unreachable")


def run(
    cmd: Sequence[str | os.PathLike[str]], check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def strata(
    *args: str | os.PathLike[str], check: bool = False, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user or controller would."""
    return run([sys.executable, "-m", "strata", *map(str, args)], check=check, **kw)


# Without these a root process reads and writes whatever the permission bits say.
OVERRIDES = "-dac_override,-dac_read_search,-fowner"


def strata_as_user(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """The CLI as a user that permission bits bind: as root, under setpriv without the
    capabilities that override them (the checkout may lie where no other user can reach,
    as in a ``mktemp -d``, so the user stays root)."""
    cmd = [sys.executable, "-m", "strata", *map(str, args)]
    if os.geteuid() == 0:
        cmd = [require("setpriv"), "--bounding-set", OVERRIDES, *cmd]
    return run(cmd, check=False, cwd=Path(__file__).parents[2])


def strata_json(*args: str | os.PathLike[str]) -> list[dict[str, Any]]:
    proc = strata(*args, "--json")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert events, f"no JSON events from strata {args}: {proc.stderr}"
    return events


def result_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    results = [e for e in events if e["event"] == "result"]
    assert len(results) == 1, events
    return results[0]


def qemu_img(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([require("qemu-img"), *map(str, args)], check=check)


def qemu_io_scribble(
    image: Path,
    fmt: str,
    size: int,
    *,
    seed: int,
    writes: int,
    extra: Sequence[tuple[int, int, int]] = (),
) -> None:
    """``writes`` patterned writes of every size class (a sector to 3 MiB and a sector) at
    random sector offsets, then the ``extra`` (offset, length, pattern) ones: one qemu-io run."""
    rng = random.Random(seed)
    cmds = []
    for _ in range(writes):
        length = rng.choice([512, 4096, 65536, (3 << 20) + 512])
        offset = rng.randrange(0, size - length) // 512 * 512
        cmds += ["-c", f"write -P {rng.randrange(1, 256):#x} {offset} {length}"]
    for offset, length, pattern in extra:
        cmds += ["-c", f"write -P {pattern:#x} {offset} {length}"]
    run([require("qemu-io"), "-f", fmt, *cmds, image])


def qemu_info(path: Path | str, fmt: str) -> dict[str, Any]:
    return json.loads(qemu_img("info", "--output=json", "-f", fmt, path).stdout)


def qemu_compare(reference_raw: Path | str, image: Path | str, fmt: str) -> int:
    return qemu_img("compare", "-f", "raw", "-F", fmt, reference_raw, image, check=False).returncode


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss: int
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0  # user + system, all threads


def measure_strata(*args: str | os.PathLike[str]) -> Measured:
    return measure([sys.executable, "-m", "strata", *map(str, args)])


def measure(cmd: Sequence[str | os.PathLike[str]]) -> Measured:
    """Wall time, peak RSS and CPU seconds (user + system) of one command.

    GNU time runs the command: a child forked straight from this (large) Python
    process would inherit its RSS high-water mark across exec and report that.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        wrapped = [
            require("time"),
            "-f",
            "%e %M %U %S",
            "-o",
            report.name,
            *map(str, cmd),
        ]
        start = time.perf_counter()
        proc = subprocess.run(wrapped, capture_output=True, text=True, errors="replace")
        seconds = time.perf_counter() - start
        fields = report.read().split()
    rss_kib, cpu = (int(fields[-3]), float(fields[-2]) + float(fields[-1])) if fields else (0, 0.0)
    return Measured(seconds, rss_kib * 1024, proc.returncode, proc.stdout, proc.stderr, cpu)
