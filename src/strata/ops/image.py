"""Image verbs: publish a template into a layered image, export it for a target platform.

Priority rule: the OS layer first, then app layers in ascending priority (a higher priority
wins a conflict; an app without one gets 100 times its 1-based position, so the last listed
wins), then the platform layer, which always wins.

Publish composes block tables when every layer was captured on exactly the layers below it
(no chunk is read or written).  Otherwise it merges at file level (``layer.filemerge``): the
layers' file deltas are applied in that same order onto the OS layer's FAT volumes, and the
result carries a conflict report (path, layers, winner), also kept in the image's manifest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from strata import jsontext
from strata.blockdev.copy import Progress
from strata.errors import InvalidInput, NotFound, StateError, SystemIOError
from strata.formats import registry
from strata.formats.registry import WriteRequest
from strata.fs import where
from strata.layer.storedev import StoreDevice
from strata.ops.output import check_destination, refuse_inside, written
from strata.ops.store import PathLike, open_store
from strata.ops.targets import TARGETS, target
from strata.store import Manifest, Store, to_hex
from strata.store.catalog import check_distinct, check_name

if TYPE_CHECKING:
    from strata.layer import filemerge
    from strata.ops.layers import Resolved


@dataclass(frozen=True)
class AppRef:
    ref: str
    priority: int | None = None


@dataclass(frozen=True)
class Template:
    name: str
    os: str
    platform: str | None = None
    apps: Sequence[AppRef] = field(default_factory=tuple)
    target: str | None = None
    description: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "os": self.os,
            "platform": self.platform,
            "apps": [{"layer": a.ref, "priority": a.priority} for a in self.apps],
            "target": self.target,
            "description": self.description,
        }


def parse_app(text: str) -> AppRef:
    """``NAME[:VERSION][@PRIORITY]``."""
    ref, sep, prio = text.rpartition("@")
    if not sep:
        return AppRef(text)
    try:
        return AppRef(ref, int(prio))
    except ValueError as e:
        raise InvalidInput(f"app {text!r}: priority {prio!r} is not an integer") from e


def load_template(path: str) -> Template:
    try:
        with open(path, "rb") as f:
            raw = jsontext.parse(f.read())
    except FileNotFoundError as e:
        raise NotFound(what=f"template {path}") from e
    except IsADirectoryError as e:
        raise InvalidInput(f"template {path} is a directory, not a JSON file") from e
    except OSError as e:
        raise SystemIOError.of(e, path) from e
    except ValueError as e:  # syntax, UTF-8, nesting
        raise InvalidInput(f"template {path} is not JSON: {e}") from e
    return template_from(raw, path)


def template_from(raw: Any, where: str = "template") -> Template:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: expected a JSON object")
    unknown = set(raw) - {"name", "os", "platform", "apps", "target", "description"}
    if unknown:
        raise InvalidInput(f"{where}: unknown keys {sorted(unknown)}")
    tpl = Template(
        name=_text(raw, "name", where),
        os=_layer_text(raw["os"], where) if "os" in raw else _text(raw, "os", where),
        platform=_layer_text(raw["platform"], where) if raw.get("platform") else None,
        apps=tuple(_app(a, where) for a in _list(raw.get("apps", []), where)),
        target=raw.get("target"),
        description=str(raw.get("description", "")),
    )
    _check_distinct(tpl, where)
    return tpl


def _check_distinct(tpl: Template, where: str) -> None:
    """Each layer once, named as it was given: by option (``--app``) or template key."""
    options = where == "options"
    apps = "--app" if options else "apps"
    try:
        check_distinct(
            [("--os" if options else "os", tpl.os)]
            + [(apps, a.ref) for a in tpl.apps]
            + ([("--platform" if options else "platform", tpl.platform)] if tpl.platform else [])
        )
    except InvalidInput as e:
        if options:
            raise
        raise InvalidInput(f"{where}: {e.message}") from e


def _text(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{where}: {key!r} must be a non-empty string")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{where}: 'apps' must be a list")
    return value


def _layer_text(value: Any, where: str) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("layer"), str):
        version = value.get("version")
        return f"{value['layer']}:{version}" if version is not None else value["layer"]
    raise InvalidInput(f"{where}: a layer is 'NAME[:VERSION]' or {{'layer': …, 'version': …}}")


def _app(value: Any, where: str) -> AppRef:
    if isinstance(value, str):
        return parse_app(value)
    priority = value.get("priority") if isinstance(value, dict) else None
    if priority is not None and not isinstance(priority, int):
        raise InvalidInput(f"{where}: priority must be an integer, got {priority!r}")
    return AppRef(_layer_text(value, where), priority)


def ordered_apps(apps: Sequence[AppRef]) -> list[AppRef]:
    keyed = [
        (a.priority if a.priority is not None else 100 * (i + 1), i, a) for i, a in enumerate(apps)
    ]
    return [a for _, _, a in sorted(keyed, key=lambda k: (k[0], k[1]))]


def publish(tpl: Template, *, store: PathLike = None, comment: str = "") -> dict[str, Any]:
    from strata.layer.blocks import BLOCK_SIZE  # start-up: see _compose

    check_name(tpl.name, "image")
    _check_distinct(tpl, "template")  # a Template the caller made (template_from checks too)
    if tpl.target is not None:
        target(tpl.target)
    started = time.monotonic()
    with open_store(store) as st:
        st.catalog.check_new_image(tpl.name)  # before a merge stores chunks for nothing
        layers = _template_layers(st, tpl)
        first = layers[0].manifest.meta
        table, merge = _compose(st, layers, int(first["size"]), int(first.get("sector_size", 512)))
        platform = layers[-1] if tpl.platform else None
        platform_row = st.catalog.layer(platform.layer) if platform else None
        conflicts = _with_priorities(merge.conflicts, tpl) if merge else []
        meta = {
            "name": tpl.name,
            "template": tpl.as_json(),
            "size": int(first["size"]),
            "sector_size": int(first.get("sector_size", 512)),
            "block_size": BLOCK_SIZE,
            "layers": [x.ref for x in layers],
            "os_layer": layers[0].layer,
            "platform_layer": platform.ref if platform else None,
            "platform_types": platform_row["platform_types"] if platform_row else [],
            "target": tpl.target,
            "published": time.time(),
            "merge": "file" if merge else "block",
            "conflicts": conflicts,
        }
        manifest = Manifest("image", meta)
        manifest.add_table("blocks", "chunks-v1", table)
        mid = st.put_manifest(manifest)
        st.commit_image(tpl.name, mid, tpl.as_json(), comment)
        return {
            "image": tpl.name,
            "manifest": to_hex(mid),
            "size": meta["size"],
            "layers": meta["layers"],
            "blocks": len(table),
            "target": tpl.target,
            "merge": meta["merge"],
            "conflicts": conflicts,
            **(_merge_stats(merge) if merge else {}),
            "seconds": round(time.monotonic() - started, 3),
        }


def _compose(
    st: Store, layers: Sequence[Resolved], size: int, sector_size: int
) -> tuple[Any, filemerge.MergeResult | None]:
    """Block tables when the stack is valid at block level (the fast path), else a merge of
    the file deltas."""
    # Imported here, not at module top: the layer and file-merge machinery (every file
    # system reader, pycdlib) would cost `image export` and `image list` their start-up.
    from strata.layer import filemerge
    from strata.ops.layers import check_stack, composed_table

    try:
        check_stack(layers)
    except StateError:
        merged = filemerge.merge(st, layers, size, sector_size, workdir=str(st.root / "tmp"))
        return merged.table, merged
    return composed_table(layers), None


def _merge_stats(merge: filemerge.MergeResult) -> dict[str, Any]:
    return {
        "fat_volumes": merge.volumes,
        **({"ntfs_volumes": merge.ntfs_volumes} if merge.ntfs_volumes else {}),
        "merged_blocks": merge.merged_blocks,
        "outside_blocks": merge.outside_blocks,
        "applied_entries": merge.applied,
        **({"merge_warnings": merge.warnings} if merge.warnings else {}),
        **({"registry_merges": merge.hives} if merge.hives else {}),
    }


def _with_priorities(conflicts: list[dict[str, Any]], tpl: Template) -> list[dict[str, Any]]:
    """Each conflict names the priority each layer had in the template (the platform: last)."""
    order = ordered_apps(tpl.apps)
    prio = {}
    for i, app in enumerate(tpl.apps):
        prio[app.ref] = app.priority if app.priority is not None else 100 * (i + 1)
    out = []
    for c in conflicts:
        priorities = {}
        for label in c["layers"]:
            name = label.rpartition(":")[0]
            match = [a.ref for a in order if a.ref in (label, name)]
            priorities[label] = prio[match[0]] if match else None
        out.append({**c, "priorities": priorities})
    return out


def conflict_lines(conflicts: Sequence[dict[str, Any]]) -> list[str]:
    """The conflict report as text, one line per path."""
    return [
        f"conflict: {c['path']} ({where(c['partition'])}"
        + (", registry value" if c.get("kind") == "registry value" else "")
        + "): "
        + ", ".join(_with_prio(label, c.get("priorities", {})) for label in c["layers"])
        + (" -> merged key by key" if c.get("merged") == "registry" else f" -> {c['winner']} wins")
        for c in conflicts
    ]


def _with_prio(label: str, priorities: dict[str, Any]) -> str:
    p = priorities.get(label)
    return label if p is None else f"{label}@{p}"


def _template_layers(st: Store, tpl: Template) -> list[Resolved]:
    from strata.ops.layers import check_kinds, check_same_os, resolve  # start-up: see _compose

    os_layer = resolve(st, tpl.os)
    apps = [resolve(st, a.ref) for a in ordered_apps(tpl.apps)]
    platform = [resolve(st, tpl.platform)] if tpl.platform else []
    check_kinds(os_layer, next(iter(platform), None), apps)
    check_same_os(os_layer, apps + platform)
    return [os_layer, *apps, *platform]


def find_image(st: Store, name: str) -> tuple[dict[str, Any], Manifest]:
    for row in st.catalog.images():
        if row["name"] == name or row["manifest"] == name:
            return row, st.get_manifest(bytes.fromhex(row["manifest"]))
    raise NotFound(what=f"image {name!r}")


def delete_image(name: str, *, store: PathLike = None, comment: str = "") -> dict[str, Any]:
    """Delete published image ``name`` from the catalog (with a history row); nothing depends
    on an image, and its chunks no layer version or other image uses are ``store gc``'s."""
    check_name(name, "image")
    with open_store(store) as st:
        row = st.catalog.delete_image(name, comment)
    return {
        "image": name,
        "manifest": row["manifest"],
        "logical_size": row["logical_size"],
        "reclaim_at_most": row["stored_size"] or 0,
        "reclaim": "run `strata store gc` to reclaim the chunks no layer version or other "
        "image uses",
    }


def list_images(*, store: PathLike = None) -> list[dict[str, Any]]:
    with open_store(store, readonly=True) as st:
        return st.catalog.images()


def export(
    image: str,
    dest: str,
    *,
    target_name: str | None = None,
    fmt: str | None = None,
    options: Sequence[str] = (),
    force: bool = False,
    store: PathLike = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    started = time.monotonic()
    with open_store(store, readonly=True) as st:
        row, manifest = find_image(st, image)
        name = target_name or manifest.meta.get("target")
        if name is None:
            raise InvalidInput(
                f"image {image!r} has no target; choose one with --target ({', '.join(TARGETS)})"
            )
        profile = target(name)
        _check_platform(manifest.meta, profile.name, profile.platform, force)
        out_format = fmt or profile.format
        texts = (profile.options if out_format == profile.format else ()) + tuple(options)
        driver = registry.get(out_format)
        parsed = registry.options_for(out_format, texts)
        size = _aligned(int(manifest.meta["size"]), profile.size_align)
        source = StoreDevice(
            st, manifest.table("blocks"), size, int(manifest.meta.get("sector_size", 512))
        )
        check_destination(dest, onto_devices=driver.onto_devices)
        refuse_inside(dest, st.root, "the store")
        if driver.write is None:
            raise InvalidInput(f"strata cannot write {out_format}")
        try:
            with written(dest, driver.atomic_replace) as path:
                driver.write(WriteRequest(source, path, parsed, progress=progress))
        finally:
            source.close()
        return {
            "image": row["name"],
            "target": profile.name,
            "format": out_format,
            "options": list(texts),
            "filename": dest,
            "virtual-size": size,
            "seconds": round(time.monotonic() - started, 3),
        }


def _aligned(size: int, align: int) -> int:
    return -(-size // align) * align


def _check_platform(meta: dict[str, Any], name: str, platform: str | None, force: bool) -> None:
    layer = meta.get("platform_layer")
    types = meta.get("platform_types") or []
    if force or platform is None or layer is None or platform in types:
        return
    raise InvalidInput(
        f"image {meta.get('name')!r} has platform layer {':'.join(layer)} made for "
        f"{', '.join(types) or 'no platform'}, not {name}; use --force to export anyway"
    )


__all__ = [
    "AppRef",
    "Template",
    "delete_image",
    "export",
    "list_images",
    "load_template",
    "parse_app",
    "publish",
    "template_from",
]
