"""``strata disk check`` for VHD: every finding of the metadata walk, plus the parent link.

References: Microsoft "Virtual Hard Disk Image Format Specification" v1.0 ("Hard Disk Footer
Format", "Dynamic Disk Header Format", "Implementing a Differencing Hard Disk").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from strata.blockdev.chain import ParentRef, find_parent, why_unopened
from strata.blockdev.rawfile import open_file
from strata.errors import StrataError
from strata.formats.registry import Problem, parent_dirs
from strata.formats.vhd import structs as s
from strata.formats.vhd.layout import Finding, Layout, inspect
from strata.formats.vhd.reader import VhdDevice, parent_candidates, parent_description


def check(path: str, allowed_dirs: Sequence[str] = ()) -> list[Problem]:
    fd = open_file(path, False)
    try:
        lay = inspect(fd, path)
    finally:
        os.close(fd)
    problems = [_problem(f) for f in lay.findings]
    if lay.disk_type == s.DISK_DIFFERENCING and lay.header is not None and not lay.first_error():
        problems += _parent_problems(path, lay, allowed_dirs)
    return problems


def _problem(f: Finding) -> Problem:
    severity = "warning" if f.kind == "warning" else "error"
    return Problem(f.structure, f.problem, f.field, f.offset, severity)


def _parent_problems(path: str, lay: Layout, allowed_dirs: Sequence[str]) -> list[Problem]:
    """The parent as every verb finds it (the first locator naming a file in the allowed
    directories): its UUID must match, its timestamp should. A parent that cannot be found or
    opened is an error, as in ``qemu-img check``."""
    ref = ParentRef(parent_candidates(lay), description=parent_description(lay))
    try:
        full = find_parent(path, ref, parent_dirs(path, allowed_dirs))
        with VhdDevice(full) as parent:
            return _compare_parent(lay, parent)
    except (StrataError, OSError) as e:
        at = lay.header_offset + s.HEADER_LOCATORS_AT
        return [Problem("parent", why_unopened(e), "parent_locators", at)]


def _compare_parent(lay: Layout, parent: VhdDevice) -> list[Problem]:
    header, at = lay.header, lay.header_offset
    problems = []
    if parent.unique_id != bytes(header.parent_unique_id):
        problems.append(
            Problem(
                "dynamic header",
                f"parent {parent.path} has UUID {s.uuid_text(parent.unique_id)}, expected "
                f"{s.uuid_text(header.parent_unique_id)}",
                "parent_unique_id",
                at + 40,
            )
        )
    if parent.timestamp != int(header.parent_timestamp):
        # blktap (XenServer's vhd-util) records the parent file's mtime, not its footer
        # timestamp, so a mismatch is a warning, not a reason to refuse the chain.
        problems.append(
            Problem(
                "dynamic header",
                f"parent timestamp {s.timestamp_text(int(header.parent_timestamp))} differs from "
                f"the parent's footer timestamp {s.timestamp_text(parent.timestamp)}",
                "parent_timestamp",
                at + 56,
                "warning",
            )
        )
    if parent.size != lay.size:
        problems.append(
            Problem(
                "footer",
                f"size {lay.size} differs from the parent's {parent.size}",
                "current_size",
                lay.footer_offset + 48,
                "warning",
            )
        )
    return problems
