"""Export targets: which format, subformat and sizing each platform takes.

Add a target by adding a row. ``platform`` is the platform type a platform layer must
list for the image to be exported there (checked unless ``--force``).
"""

from __future__ import annotations

from typing import NamedTuple

from strata.errors import InvalidInput


class Target(NamedTuple):
    name: str
    format: str
    options: tuple[str, ...] = ()
    size_align: int = 1
    platform: str | None = None
    description: str = ""
    suffix: str = ""
    aliases: tuple[str, ...] = ()


MiB = 1 << 20

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "pvs",
            "vhdx",
            ("subformat=dynamic",),
            platform="pvs",
            description="Citrix Provisioning vDisk (dynamic VHDX)",
            suffix=".vhdx",
        ),
        Target(
            "xenserver",
            "vhd",
            ("subformat=dynamic",),
            platform="xenserver",
            description="XenServer / Citrix Hypervisor (dynamic VHD)",
            suffix=".vhd",
        ),
        Target(
            "vsphere",
            "vmdk",
            ("subformat=streamOptimized",),
            platform="vsphere",
            description="vSphere / ESXi OVF import (streamOptimized VMDK)",
            suffix=".vmdk",
        ),
        Target(
            "hyperv",
            "vhdx",
            ("subformat=dynamic",),
            platform="hyperv",
            description="Hyper-V (dynamic VHDX)",
            suffix=".vhdx",
        ),
        # Azure takes only fixed VHDs whose virtual size is a whole number of MiB.
        Target(
            "azure",
            "vhd",
            ("subformat=fixed", "azure=on"),
            size_align=MiB,
            platform="azure",
            description="Azure (fixed VHD, whole-MiB size)",
            suffix=".vhd",
        ),
        Target("raw", "raw", (), description="raw disk bytes (sparse file)", suffix=".raw"),
    )
}


def target(name: str) -> Target:
    try:
        return TARGETS[name.lower()]
    except KeyError as e:
        raise InvalidInput(f"unknown export target {name!r} (targets: {', '.join(TARGETS)})") from e
