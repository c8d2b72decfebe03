"""strata's verbs as Python functions: what a controller imports instead of shelling out.

Each function is what the CLI command of the same name calls; it returns the dict the
command prints as its ``result`` event and raises ``strata.errors`` exceptions (whose
``exit_code`` is the CLI's).
"""

from strata.integrity.gate import check_image as check_disk_integrity
from strata.ops.delete import delete_layer, delete_version
from strata.ops.disk import OpenSpec, check, compare, convert, create, info, map_entries
from strata.ops.fs import cat, ls
from strata.ops.image import (
    AppRef,
    Template,
    delete_image,
    export,
    list_images,
    load_template,
    publish,
    template_from,
)
from strata.ops.layers import (
    PackagingRequest,
    create_packaging_disk,
    finalize,
    import_os,
    layer_diff,
)
from strata.ops.packaging import list_disks as list_packaging_disks
from strata.ops.packaging import prune_bases
from strata.ops.store import (
    gc_store,
    init_store,
    layer_history,
    list_layers,
    show_layer,
    store_stats,
    verify_store,
)
from strata.ops.targets import TARGETS

__all__ = [
    "TARGETS",
    "AppRef",
    "OpenSpec",
    "PackagingRequest",
    "Template",
    "cat",
    "check",
    "check_disk_integrity",
    "compare",
    "convert",
    "create",
    "create_packaging_disk",
    "delete_image",
    "delete_layer",
    "delete_version",
    "export",
    "finalize",
    "gc_store",
    "import_os",
    "info",
    "init_store",
    "layer_diff",
    "layer_history",
    "list_images",
    "list_layers",
    "list_packaging_disks",
    "load_template",
    "ls",
    "map_entries",
    "prune_bases",
    "publish",
    "show_layer",
    "store_stats",
    "template_from",
    "verify_store",
]
