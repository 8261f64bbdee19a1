"""The store's root file (single store or sharded index): create, check compatibility, refresh from parts."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.store import layout as L
from xaiclip_cli.store import target as T
from xaiclip_cli.store.provenance import StoreIdentity
from xaiclip_cli.store.target import claim_target
from xaiclip_cli.store.writer import (
    StoreLockedError,
    create_feature_vds,
    create_row_datasets,
    open_h5,
    refresh_counts,
    set_attrs,
    try_open,
)

log = logging.getLogger("xaiclip.store")


# Files a store keeps in its parts folder (anything else there is the user's and stays).
_PART_GLOBS = ("part-*.h5", "part-*.h5" + L.PART_PARTIAL_SUFFIX, "part-*.h5" + L.PART_PARTIAL_SUFFIX + ".tmp")


def remove_store(h5: Path) -> None:
    """Delete a store for --overwrite: the root file and the part files of its parts folder.

    Only what provably belongs to a store goes (target.claim_target refuses anything else, exit 2, and sets an
    unreadable file aside as .damaged instead of deleting it); other files in the parts folder are kept.
    """
    t = claim_target(h5, overwrite=True)
    if t.kind in (T.STORE, T.SEED):
        h5.unlink(missing_ok=True)
    remove_part_files(h5)


def remove_part_files(h5: Path) -> None:
    """Delete the part files of ``h5``'s parts folder, and the folder when nothing else is in it."""
    pdir = L.parts_dir(h5)
    if not pdir.is_dir():
        return
    for pattern in _PART_GLOBS:
        for p in pdir.glob(pattern):
            p.unlink(missing_ok=True)
    others = sorted(q.name for q in pdir.iterdir())
    if others:
        log.warning("kept %s: it holds files that are not store parts (%s)", pdir, ", ".join(others[:5]))
    else:
        pdir.rmdir()


def ensure_skeleton(f: h5py.File) -> None:
    """templates/ and meta/ always exist; the seed prompt attrs default to empty lists."""
    f.require_group(L.TEMPLATES)
    f.require_group(L.META)
    for name in L.PROMPT_LIST_ATTRS:
        if name not in f.attrs:
            f.attrs[name] = L.json_attr([])
    if "created_at" not in f.attrs:
        f.attrs["created_at"] = L.now_str()
    if "split_counts" not in f.attrs:
        f.attrs["split_counts"] = L.json_attr({s: 0 for s in L.SPLITS})


def write_meta(f: h5py.File, name: str, value: Any) -> None:
    """Replace meta/<name> with a scalar vlen-str dataset holding JSON."""
    g = f.require_group(L.META)
    if name in g:
        del g[name]
    g.create_dataset(name, data=L.json_attr(value), dtype=L.string_dtype())


def read_meta(f: h5py.File, name: str, default: Any = None) -> Any:
    """Parse meta/<name> (JSON), ``default`` when absent."""
    g = f.get(L.META)
    if g is None or name not in g:
        return default
    return json.loads(L.decode_str(g[name][()]))


def check_model(f: h5py.File, path: Path, identity: StoreIdentity, *, rows: bool) -> None:
    """Refuse (exit 2) a store of another schema or model; ``rows`` also compares the image-stage fingerprint."""
    attrs = f.attrs
    schema = L.decode_str(attrs[L.SCHEMA_ATTR]) if L.SCHEMA_ATTR in attrs else None
    if schema is None:
        if L.IMAGE_FEATURES in f or L.TEMPLATES in f:
            raise UsageError(f"{path} is not an xaiclip store (no {L.SCHEMA_ATTR} attr); "
                             "pass --overwrite or another --h5")
        return
    if schema != L.SCHEMA_VERSION:
        raise UsageError(f"{path} has schema {schema!r}, this xaiclip writes {L.SCHEMA_VERSION!r}; "
                         "pass --overwrite or another --h5")
    what = f"model {L.decode_str(attrs.get('model_id', '?'))}@{L.decode_str(attrs.get('model_revision', '?'))}"
    if rows and "fingerprint" in attrs and L.decode_str(attrs["fingerprint"]) != identity.fingerprint():
        raise UsageError(
            f"{path} was written by {what} (cls {L.decode_str(attrs.get('cls_dtype', '?'))}, tokens "
            f"{bool(attrs.get('has_tokens', True))}); this run differs (model {identity.model_id}@"
            f"{identity.model_revision}, cls {identity.cls_dtype}, tokens {identity.has_tokens}); "
            "pass --overwrite or another --h5")
    if "model_fingerprint" in attrs and L.decode_str(attrs["model_fingerprint"]) != identity.model_fingerprint():
        raise UsageError(f"{path} was written by {what}, this run uses model {identity.model_id}@"
                         f"{identity.model_revision}; pass --overwrite or another --h5")


def check_plan(f: h5py.File, path: Path, plan: L.Plan, layout: str, source_attrs: Mapping[str, Any]) -> None:
    """Refuse (exit 2) appending rows planned for another dataset, part size or layout."""
    have_layout = L.decode_str(f.attrs.get("layout", layout))
    if have_layout != layout:
        raise UsageError(f"{path} uses --layout {have_layout}; pass --layout {have_layout} or --overwrite")
    old = read_meta(f, L.META_PLAN)
    if old is not None:
        old_plan = L.Plan.from_json(old)
        if old_plan.split_sizes != plan.split_sizes:
            raise UsageError(f"{path} holds a dataset with splits {old_plan.split_sizes}, the input has "
                             f"{plan.split_sizes}; pass --overwrite or another --h5")
        if layout == "sharded" and old_plan.part_rows != plan.part_rows:
            raise UsageError(f"{path} was planned with --part-rows {old_plan.part_rows}; pass that or --overwrite")
    md5_old = L.decode_str(f.attrs.get("dataset_md5", ""))
    md5_new = str(source_attrs.get("dataset_md5") or "")
    if md5_old and "dataset_md5_official" not in f.attrs and md5_old == source_attrs.get("dataset_md5_official"):
        md5_old = ""  # a store from before the file's own hash was recorded held the official MD5 there: unknown
    if md5_old and md5_new and md5_old != md5_new:
        raise UsageError(f"{path} was written from a dataset file with MD5 {md5_old}, the input has {md5_new}; "
                         "pass --overwrite or another --h5")


def has_rows(f: h5py.File) -> bool:
    """True once the image stage created the row datasets."""
    return L.WRITTEN in f


def create_rows(f: h5py.File, path: Path, plan: L.Plan, identity: StoreIdentity, layout: str,
                source_attrs: Mapping[str, Any]) -> None:
    """Add the row datasets (real, or VDS features over parts when sharded), root attrs and meta/ to a root file."""
    ensure_skeleton(f)
    d, t = identity.embed_dim, identity.n_tokens
    create_row_datasets(f, plan.n_rows, d, t, identity.cls_dtype, identity.has_tokens, features=(layout == "single"))
    if layout == "sharded":
        create_feature_vds(f, path, plan, d, t, identity.cls_dtype, identity.has_tokens)
    set_attrs(f, identity.image_attrs())
    set_attrs(f, {k: v for k, v in source_attrs.items() if v is not None})
    set_attrs(f, {"layout": layout, "n_rows": plan.n_rows, "n_written": 0, "part_rows": plan.part_rows,
                  "split_counts": L.json_attr({s: 0 for s in L.SPLITS})})
    write_meta(f, L.META_PLAN, plan.to_json())
    write_meta(f, L.META_PROVENANCE, identity.provenance)
    write_meta(f, L.META_PROCESSOR, identity.processor_config)


def prepare_root(path: Path, plan: L.Plan, identity: StoreIdentity, layout: str,
                 source_attrs: Mapping[str, Any]) -> bool:
    """Open or create the root file, check it, add rows when missing. Returns True when rows were created now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Refuses what is not provably a store; a damaged index beside our parts is set aside and rebuilt from them.
    claim_target(path, rebuild=layout == "sharded")
    with open_h5(path, "a") as f:
        check_model(f, path, identity, rows=True)
        if has_rows(f):
            check_plan(f, path, plan, layout, source_attrs)
            return False
        create_rows(f, path, plan, identity, layout, source_attrs)
        f.flush()
        return True


def copy_part_columns(index: h5py.File, part: h5py.File | None, start: int, stop: int) -> None:
    """Copy a part's small columns into the index rows [start, stop) (placeholders when ``part`` is None)."""
    sl = slice(start, stop)
    if part is None:
        for name, spec in L.small_column_specs().items():
            if name == L.SPLIT:
                index[name][sl] = np.array([""] * (stop - start), dtype=object)
            else:
                index[name][sl] = spec.fill
        return
    for name in L.SMALL_COLUMNS:
        data = part[name][...]
        if name == L.SPLIT:
            data = np.array(L.str_list(data), dtype=object)
        index[name][sl] = data


def part_status(path: Path, k: int, plan: L.Plan, fingerprint: str | None) -> tuple[str, h5py.File | None]:
    """('complete'|'missing'|'partial'|'damaged'|'mismatch'|'bad-count', open handle when complete)."""
    final = L.part_path(path, k)
    if not final.exists():
        return ("partial" if L.part_path(path, k, partial=True).exists() else "missing"), None
    f = try_open(final)
    if f is None:
        return "damaged", None
    a, b = plan.part_range(k)
    ok_range = int(f.attrs.get("row_start", -1)) == a and int(f.attrs.get("row_stop", -1)) == b
    if fingerprint is not None and L.decode_str(f.attrs.get("fingerprint", "")) != fingerprint:
        f.close()
        return "mismatch", None
    if not ok_range or not bool(f.attrs.get("complete", False)) or int(f.attrs.get("n_written", -1)) != b - a \
            or int(np.count_nonzero(f[L.WRITTEN][...])) != b - a:
        f.close()
        return "bad-count", None
    return "complete", f


def refresh_index(path: Path, plan: L.Plan, parts: list[int] | None = None,
                  fingerprint: str | None = None, wait: float | None = None) -> dict[int, str]:
    """Rebuild the index small columns of ``parts`` (default all) from the finished part files; update counts.

    ``wait``: seconds to wait for another process's lock on the index (default writer.LOCK_WAIT_S).
    """
    statuses: dict[int, str] = {}
    with open_h5(path, "r+", wait=wait) as index:
        fp = fingerprint or L.decode_str(index.attrs.get("fingerprint", "")) or None
        for k in (range(plan.n_parts) if parts is None else parts):
            status, pf = part_status(path, k, plan, fp)
            statuses[k] = status
            a, b = plan.part_range(k)
            if pf is not None:
                with pf:
                    copy_part_columns(index, pf, a, b)
            else:
                copy_part_columns(index, None, a, b)
        refresh_counts(index)
        index.flush()
    return statuses


def rebuild_index(path: Path) -> None:
    """Write a fresh index (attrs, templates/, meta/, empty rows + VDS) from a damaged one, then swap it in.

    A writer killed while refreshing the index can leave a file that opens but refuses writes; reading still works.
    """
    tmp = path.with_name(path.name + ".rebuild")
    with h5py.File(path, "r") as old, h5py.File(tmp, "w") as new:
        for k, v in old.attrs.items():
            new.attrs[k] = v
        for name in (L.TEMPLATES, L.META):
            if name in old:
                old.copy(old[name], new, name=name)
        plan = L.Plan.from_json(read_meta(old, L.META_PLAN))
        d = int(old.attrs["D"])
        has_tokens = L.IMAGE_TOKENS in old
        t = int(old.attrs.get("T_img", -1))
        cls_dtype = L.decode_str(old.attrs.get("cls_dtype", "float32"))
        ensure_skeleton(new)
        create_row_datasets(new, plan.n_rows, d, t, cls_dtype, has_tokens, features=False)
        create_feature_vds(new, path, plan, d, t, cls_dtype, has_tokens)
    tmp.replace(path)


def safe_refresh_index(path: Path, plan: L.Plan, parts: list[int] | None = None,
                       fingerprint: str | None = None, wait: float | None = None) -> dict[int, str]:
    """refresh_index, rebuilding the index first when a killed run left it unwritable (never when merely locked)."""
    try:
        return refresh_index(path, plan, parts, fingerprint, wait)
    except StoreLockedError:
        raise  # held by another process, not damaged: never rebuild under a reader
    except (OSError, RuntimeError, XaiclipError) as exc:
        log.warning("index %s could not be updated (%s); rebuilding it from its parts", path,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        rebuild_index(path)
        return refresh_index(path, plan, None, fingerprint)
