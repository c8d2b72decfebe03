"""The layer catalog: layers, versions and their states, images, and the audit history.

References: strata architecture ("Store"); the state machine follows Citrix App Layering's
version lifecycle (packaging -> finalizing -> deployable, or failed).

Every change and its history row are written in one SQLite transaction, so the audit trail
never misses or invents an operation. Versions become ``deployable`` only through
``Store.commit_version``, which checks that the manifest and its chunks are durable first.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from strata.errors import InvalidInput, NotFound, StateError
from strata.store.db import transaction
from strata.store.icons import icon_type
from strata.store.ids import to_hex

KINDS = ("os", "platform", "app")
STATES = ("packaging", "finalizing", "deployable", "failed")
PURPOSES = ("publish", "package")
# deployable is reached only by commit (which carries the manifest).
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "packaging": ("finalizing", "failed"),
    "finalizing": ("packaging", "failed"),
    "deployable": (),
    "failed": (),
}
MAX_NAME = 200
# ':' splits NAME:VERSION, '@' splits NAME@PRIORITY; an image name must not leave the
# directory it is written under.
RESERVED = ":@/\\"


def check_name(value: str, what: str) -> str:
    """The one rule for the name of a layer, a version or an image (``what``)."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise InvalidInput(f"{what} name must be 1-{MAX_NAME} characters, got {value!r}")
    if any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{what} name {value!r} holds control characters")
    if any(c in RESERVED for c in value) or value in (".", ".."):
        raise InvalidInput(
            f"{what} name {value!r} is not allowed: a name may not contain "
            f"{' '.join(RESERVED)} nor be . or .."
        )
    return value


def check_distinct(refs: Iterable[tuple[str, str]]) -> None:
    """Each layer once in a stack: ``refs`` are (the option or key that gave it, its
    ``NAME[:VERSION]``); the same layer twice, in any versions, is refused naming both."""
    seen: dict[str, str] = {}
    for where, ref in refs:
        name = ref.rpartition(":")[0] or ref
        given = f"{where} {ref}"
        if name in seen:
            raise InvalidInput(
                f"layer {name!r} is given twice ({seen[name]}, {given}); "
                "a disk or an image takes each layer once"
            )
        seen[name] = given


class Catalog:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- audit history -------------------------------------------------------------------
    def record(
        self,
        operation: str,
        result: str = "ok",
        *,
        comment: str = "",
        layer: str | None = None,
        version: str | None = None,
        image: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append one history row (inside the caller's transaction when there is one)."""
        self.conn.execute(
            "INSERT INTO history(time, operation, layer, version, image, comment, result, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                operation,
                layer,
                version,
                image,
                comment,
                result,
                json.dumps(details or {}, sort_keys=True, default=str),
            ),
        )

    def log(self, operation: str, result: str = "ok", **fields: Any) -> None:
        with transaction(self.conn):
            self.record(operation, result, **fields)

    def history(self, layer: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The audit rows, oldest first, of ``layer`` (which may have been deleted) or of all."""
        sql = "SELECT id, time, operation, layer, version, image, comment, result, details "
        sql += "FROM history" + (" WHERE layer = ?" if layer is not None else "") + " ORDER BY id"
        args: list[Any] = [layer] if layer is not None else []
        rows = self.conn.execute(sql, args).fetchall()
        if layer is not None and not rows:  # a deleted layer keeps its history
            self._layer_row(layer)
        if limit is not None:
            rows = rows[-limit:]
        keys = ("id", "time", "operation", "layer", "version", "image", "comment", "result")
        return [{**dict(zip(keys, r[:8], strict=True)), "details": json.loads(r[8])} for r in rows]

    # -- layers --------------------------------------------------------------------------
    def create_layer(
        self,
        name: str,
        kind: str,
        *,
        os_layer: str | None = None,
        description: str = "",
        icon: bytes | None = None,
        platform_types: Sequence[str] = (),
        purpose: str | None = None,
        comment: str = "",
    ) -> dict[str, Any]:
        check_name(name, "layer")
        if kind not in KINDS:
            raise InvalidInput(f"layer kind must be one of {', '.join(KINDS)}, got {kind!r}")
        mime = icon_type(icon) if icon is not None else None
        self._check_platform(kind, platform_types, purpose)
        with transaction(self.conn):
            if self._find_layer(name) is not None:
                raise InvalidInput(f"layer {name!r} already exists")
            os_id = self._os_layer_id(kind, os_layer)
            self.conn.execute(
                "INSERT INTO layers(name, kind, os_layer, description, icon, icon_type,"
                " platform_types, purpose, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    kind,
                    os_id,
                    description,
                    icon,
                    mime,
                    json.dumps(list(platform_types)),
                    purpose,
                    time.time(),
                ),
            )
            self.record("create-layer", comment=comment, layer=name, details={"kind": kind})
        return self.layer(name)

    def _check_platform(self, kind: str, types: Sequence[str], purpose: str | None) -> None:
        if kind != "platform" and (types or purpose):
            raise InvalidInput("platform types and purpose apply to platform layers only")
        if purpose is not None and purpose not in PURPOSES:
            raise InvalidInput(f"platform purpose must be publish or package, got {purpose!r}")
        if any(not isinstance(t, str) or not t for t in types):
            raise InvalidInput(f"platform types must be non-empty strings, got {list(types)!r}")

    def _os_layer_id(self, kind: str, os_layer: str | None) -> int | None:
        if kind == "os":
            if os_layer is not None:
                raise InvalidInput("an OS layer has no owning OS layer")
            return None
        if os_layer is None:
            if kind == "app":
                raise InvalidInput("an app layer needs its OS layer")
            return None
        row = self._layer_row(os_layer)
        if row["kind"] != "os":
            raise InvalidInput(f"layer {os_layer!r} is a {row['kind']} layer, not an OS layer")
        return int(row["id"])

    def set_icon(self, name: str, icon: bytes, comment: str = "") -> None:
        mime = icon_type(icon)
        with transaction(self.conn):
            self._layer_row(name)
            self.conn.execute(
                "UPDATE layers SET icon = ?, icon_type = ? WHERE name = ?", (icon, mime, name)
            )
            self.record("set-icon", comment=comment, layer=name, details={"type": mime})

    def icon(self, name: str) -> tuple[bytes, str] | None:
        row = self.conn.execute(
            "SELECT icon, icon_type FROM layers WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(what=f"layer {name!r}")
        return (bytes(row[0]), row[1]) if row[0] is not None else None

    def _find_layer(self, name: str) -> dict[str, Any] | None:
        cur = self.conn.execute(
            "SELECT l.id, l.name, l.kind, o.name, l.description, l.icon_type, l.platform_types,"
            " l.purpose, l.created FROM layers l LEFT JOIN layers o ON o.id = l.os_layer"
            " WHERE l.name = ?",
            (name,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        keys = ("id", "name", "kind", "os_layer", "description", "icon_type")
        out = dict(zip(keys, row[:6], strict=True))
        out.update(platform_types=json.loads(row[6]), purpose=row[7], created=row[8])
        return out

    def _layer_row(self, name: str) -> dict[str, Any]:
        row = self._find_layer(name)
        if row is None:
            raise NotFound(what=f"layer {name!r}")
        return row

    def layer(self, name: str) -> dict[str, Any]:
        """A layer with all its versions, oldest first."""
        row = self._layer_row(name)
        row["versions"] = self.versions(name)
        return row

    def layers(self) -> list[dict[str, Any]]:
        names = [r[0] for r in self.conn.execute("SELECT name FROM layers ORDER BY id")]
        out = []
        for name in names:
            row = self._layer_row(name)
            versions = self.versions(name)
            deployable = [v for v in versions if v["state"] == "deployable"]
            row.update(
                versions=len(versions),
                latest=deployable[-1]["name"] if deployable else None,
            )
            out.append(row)
        return out

    # -- versions ------------------------------------------------------------------------
    _VERSION_SQL = (
        "SELECT v.id, v.name, b.name, v.state, v.manifest, v.logical_size, v.stored_size,"
        " v.description, v.created, v.updated FROM versions v"
        " LEFT JOIN versions b ON b.id = v.base JOIN layers l ON l.id = v.layer"
    )

    def _version_dict(self, row: tuple[Any, ...]) -> dict[str, Any]:
        keys = ("id", "name", "base", "state", "manifest", "logical_size", "stored_size")
        out = dict(zip(keys, row[:7], strict=True))
        out["manifest"] = to_hex(row[4]) if row[4] is not None else None
        out.update(description=row[7], created=row[8], updated=row[9])
        return out

    def versions(self, layer: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(self._VERSION_SQL + " WHERE l.name = ? ORDER BY v.id", (layer,))
        return [self._version_dict(r) for r in rows]

    def version(self, layer: str, name: str) -> dict[str, Any]:
        row = self.conn.execute(
            self._VERSION_SQL + " WHERE l.name = ? AND v.name = ?", (layer, name)
        ).fetchone()
        if row is None:
            self._layer_row(layer)
            raise NotFound(what=f"version {name!r} of layer {layer!r}")
        out = self._version_dict(row)
        out["layer"] = layer
        return out

    def create_version(
        self,
        layer: str,
        name: str,
        *,
        base: str | None = None,
        description: str = "",
        comment: str = "",
        stack: Sequence[Sequence[str]] | None = None,
    ) -> dict[str, Any]:
        """A new version in state ``packaging``; its base defaults to the latest deployable.
        ``stack``: the [layer, version] pairs it is packaged on, recorded with it in the
        history (``recorded_stacks``), so what it depends on is known from the moment it
        exists."""
        check_name(name, "version")
        with transaction(self.conn):
            row = self._layer_row(layer)
            if self.conn.execute(
                "SELECT 1 FROM versions WHERE layer = ? AND name = ?", (row["id"], name)
            ).fetchone():
                raise InvalidInput(f"layer {layer!r} already has a version {name!r}")
            base_id = self._base_id(row["id"], layer, base)
            now = time.time()
            self.conn.execute(
                "INSERT INTO versions(layer, name, base, state, description, created, updated)"
                " VALUES (?, ?, ?, 'packaging', ?, ?, ?)",
                (row["id"], name, base_id, description, now, now),
            )
            details: dict[str, Any] = {"base": base}
            if stack is not None:
                details["stack"] = [list(ref) for ref in stack]
            self.record(
                "create-version", comment=comment, layer=layer, version=name, details=details
            )
        return self.version(layer, name)

    def discard_version(
        self, layer: str, name: str, *, drop_layer: bool = False, comment: str = ""
    ) -> None:
        """Undo ``create_version`` (and, with ``drop_layer``, ``create_layer``) for a command
        that failed before the version held anything: only a version still ``packaging``
        without a manifest goes, and the layer only when no version is left."""
        with transaction(self.conn):
            row = self._layer_row(layer)
            self.conn.execute(
                "DELETE FROM versions WHERE layer = ? AND name = ? AND state = 'packaging'"
                " AND manifest IS NULL",
                (row["id"], name),
            )
            dropped = (
                drop_layer
                and not self.conn.execute(
                    "SELECT 1 FROM versions WHERE layer = ?", (row["id"],)
                ).fetchone()
            )
            if dropped:
                self.conn.execute("DELETE FROM layers WHERE id = ?", (row["id"],))
            self.record(
                "discard-version",
                comment=comment,
                layer=layer,
                version=name,
                details={"layer_dropped": dropped},
            )

    def delete_versions(
        self,
        layer: str,
        names: Sequence[str],
        *,
        drop_layer: bool = False,
        comment: str = "",
        details: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Remove versions ``names`` of ``layer`` (with ``drop_layer``, the layer too, which
        must then have no other version), each with a ``delete-version`` history row (its
        ``details[name]``), the layer with a ``delete-layer`` row. The caller holds the
        transaction and has found that nothing depends on them (``tied_to``, the stacks;
        the deployable versions ``based_on`` them are detached: their base becomes none);
        the schema's foreign keys are the last guard. ``names``
        are oldest first, as ``versions`` lists them."""
        row = self._layer_row(layer)
        detached = {name: [] for name in names}
        for v, base, _state in self.based_on(layer, names):
            detached[base].append(v)
        for name in reversed(names):  # newest first: a version goes before its base
            # The versions made from it keep their content (folded in at finalize) and lose
            # the link; the history row names them.
            self.conn.execute(
                "UPDATE versions SET base = NULL WHERE base = (SELECT id FROM versions"
                " WHERE layer = ? AND name = ?)",
                (row["id"], name),
            )
            self.conn.execute(
                "DELETE FROM versions WHERE layer = ? AND name = ?", (row["id"], name)
            )
            extra = {"detached": detached[name]} if detached[name] else {}
            self.record(
                "delete-version",
                comment=comment,
                layer=layer,
                version=name,
                details={**((details or {}).get(name) or {}), **extra},
            )
        if drop_layer:
            self.conn.execute("DELETE FROM layers WHERE id = ?", (row["id"],))
            self.record(
                "delete-layer",
                comment=comment,
                layer=layer,
                details={"kind": row["kind"], "os_layer": row["os_layer"], "versions": names},
            )

    def based_on(self, layer: str, names: Sequence[str]) -> list[tuple[str, str, str]]:
        """(version, its base, its state) of each version of ``layer`` outside ``names``
        whose base version is one of ``names``."""
        rows = self.conn.execute(
            "SELECT v.name, b.name, v.state FROM versions v JOIN versions b ON b.id = v.base"
            " JOIN layers l ON l.id = b.layer WHERE l.name = ? ORDER BY v.id",
            (layer,),
        )
        return [(v, b, state) for v, b, state in rows if b in names and v not in names]

    def tied_to(self, os_layer: str) -> list[str]:
        """The layers that belong to OS layer ``os_layer``."""
        rows = self.conn.execute(
            "SELECT l.name FROM layers l JOIN layers o ON o.id = l.os_layer WHERE o.name = ?"
            " ORDER BY l.id",
            (os_layer,),
        )
        return [r[0] for r in rows]

    def recorded_stacks(self) -> dict[tuple[str, str], Any]:
        """The stack each version's latest ``create-version`` row recorded, by (layer,
        version); versions created without one (an OS import, an older strata) are absent.
        Not checked: the caller judges what it reads."""
        rows = self.conn.execute(
            "SELECT layer, version, details FROM history WHERE operation = 'create-version'"
            " AND result = 'ok' ORDER BY id"
        )
        out: dict[tuple[str, str], Any] = {}
        for layer, version, details in rows:
            stack = json.loads(details).get("stack")
            if stack is not None:
                out[(layer, version)] = stack
            else:
                out.pop((layer, version), None)
        return out

    def _base_id(self, layer_id: int, layer: str, base: str | None) -> int | None:
        if base is None:
            row = self.conn.execute(
                "SELECT id FROM versions WHERE layer = ? AND state = 'deployable'"
                " ORDER BY id DESC LIMIT 1",
                (layer_id,),
            ).fetchone()
            return int(row[0]) if row else None
        row = self.conn.execute(
            "SELECT id, state FROM versions WHERE layer = ? AND name = ?", (layer_id, base)
        ).fetchone()
        if row is None:
            raise NotFound(what=f"base version {base!r} of layer {layer!r}")
        if row[1] != "deployable":
            raise StateError(what=f"base version {base!r} of {layer!r} is {row[1]}, not deployable")
        return int(row[0])

    def transition(self, layer: str, name: str, state: str, comment: str = "") -> dict[str, Any]:
        if state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}, got {state!r}")
        if state == "deployable":
            raise StateError(what="a version becomes deployable only by committing its manifest")
        with transaction(self.conn):
            current = self.version(layer, name)["state"]
            if state not in TRANSITIONS[current]:
                raise StateError(
                    what=f"version {name!r} of {layer!r} is {current}; it cannot become {state}"
                )
            self.conn.execute(
                "UPDATE versions SET state = ?, updated = ? WHERE id = ?",
                (state, time.time(), self.version(layer, name)["id"]),
            )
            self.record(
                f"state-{state}",
                comment=comment,
                layer=layer,
                version=name,
                details={"from": current, "to": state},
            )
        return self.version(layer, name)

    def commit(
        self,
        layer: str,
        name: str,
        manifest: bytes,
        logical_size: int,
        stored_size: int,
        comment: str = "",
    ) -> None:
        """finalizing -> deployable with its manifest; caller holds the transaction."""
        current = self.version(layer, name)
        if current["state"] != "finalizing":
            raise StateError(
                what=f"version {name!r} of {layer!r} is {current['state']}; only a finalizing "
                "version can be committed"
            )
        self.conn.execute(
            "UPDATE versions SET state = 'deployable', manifest = ?, logical_size = ?,"
            " stored_size = ?, updated = ? WHERE id = ?",
            (manifest, logical_size, stored_size, time.time(), current["id"]),
        )
        self.record(
            "commit-version",
            comment=comment,
            layer=layer,
            version=name,
            details={"manifest": to_hex(manifest), "logical_size": logical_size},
        )

    # -- images --------------------------------------------------------------------------
    def add_image(
        self,
        name: str,
        manifest: bytes,
        template: dict[str, Any],
        logical_size: int,
        stored_size: int,
        comment: str = "",
    ) -> None:
        """Caller holds the transaction (see Store.commit_image)."""
        self.check_new_image(name)
        self.conn.execute(
            "INSERT INTO images(name, template, manifest, logical_size, stored_size, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                name,
                json.dumps(template, sort_keys=True),
                manifest,
                logical_size,
                stored_size,
                time.time(),
            ),
        )
        self.record(
            "add-image", comment=comment, image=name, details={"manifest": to_hex(manifest)}
        )

    def delete_image(self, name: str, comment: str = "") -> dict[str, Any]:
        """Remove image ``name`` with a ``delete-image`` history row, in one transaction; the
        row it had. Nothing refers to an image, and its chunks are left to ``store gc``."""
        with transaction(self.conn):
            found = [row for row in self.images() if row["name"] == name]
            if not found:
                raise NotFound(what=f"image {name!r}")
            self.conn.execute("DELETE FROM images WHERE name = ?", (name,))
            self.record(
                "delete-image",
                comment=comment,
                image=name,
                details={"manifest": found[0]["manifest"], "template": found[0]["template"]},
            )
        return found[0]

    def check_new_image(self, name: str) -> None:
        """InvalidInput unless ``name`` is a valid name no image has yet."""
        check_name(name, "image")
        if self.conn.execute("SELECT 1 FROM images WHERE name = ?", (name,)).fetchone():
            raise InvalidInput(f"image {name!r} already exists")

    def images(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT name, template, manifest, logical_size, stored_size, created FROM images"
            " ORDER BY id"
        )
        return [
            {
                "name": r[0],
                "template": json.loads(r[1]),
                "manifest": to_hex(r[2]),
                "logical_size": r[3],
                "stored_size": r[4],
                "created": r[5],
            }
            for r in rows
        ]

    def live_manifests(self) -> list[tuple[bytes, str]]:
        """(manifest id, who uses it) for every committed version and image."""
        out = [
            (bytes(r[0]), f"{r[1]}:{r[2]}")
            for r in self.conn.execute(
                "SELECT v.manifest, l.name, v.name FROM versions v JOIN layers l"
                " ON l.id = v.layer WHERE v.manifest IS NOT NULL ORDER BY v.id"
            )
        ]
        out += [
            (bytes(r[0]), f"image:{r[1]}")
            for r in self.conn.execute("SELECT manifest, name FROM images ORDER BY id")
        ]
        return out
