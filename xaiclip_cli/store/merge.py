"""store merge: check parts against the plan (fingerprint, complete, counts), rebuild the index, single copy."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xaiclip_cli.errors import PartialFailure, UsageError
from xaiclip_cli.store import layout as L
from xaiclip_cli.store import target as T
from xaiclip_cli.store.index import ensure_skeleton, read_meta, refresh_index, remove_part_files, write_meta
from xaiclip_cli.store.relink import linked_folder, relink, stale_parts_dir
from xaiclip_cli.store.results import PartRow, StoreMergeResult
from xaiclip_cli.store.target import claim_target, inspect_target
from xaiclip_cli.store.writer import (
    create_feature_vds,
    create_row_datasets,
    direct_chunk_ok,
    open_h5,
    set_attrs,
    try_open,
)

log = logging.getLogger("xaiclip.store")

# Part attrs that describe the whole store and are copied to a new index.
_ROOT_FROM_PART = tuple(a for a in (*L.PROVENANCE_ATTRS, *L.SEED_ROOT_ATTRS, "dataset_ref", "class_names",
                                    "dataset_limit")
                        if a not in ("n_written", "split_counts", "created_at"))


def _any_part(h5: Path) -> Path | None:
    pdir = L.parts_dir(h5)
    if not pdir.is_dir():
        return None
    for p in sorted(pdir.glob("part-*.h5")) + sorted(pdir.glob("part-*.h5" + L.PART_PARTIAL_SUFFIX)):
        f = try_open(p)
        if f is not None:
            f.close()
            return p
    return None


@dataclass
class _PartFacts:
    """What one part says about the whole store: root attrs, plan, provenance and feature shapes."""

    attrs: dict[str, Any]
    plan: L.Plan
    prov: Any
    d: int
    t: int
    has_tokens: bool
    cls_dtype: str


def _part_facts(part: Path) -> _PartFacts:
    with open_h5(part, "r") as pf:
        return _PartFacts(
            attrs={k: pf.attrs[k] for k in _ROOT_FROM_PART if k in pf.attrs},
            plan=L.Plan.from_json(L.decode_str(pf.attrs["plan"])),
            prov=json.loads(L.decode_str(pf.attrs.get("provenance", "{}"))),
            d=int(pf.attrs["D"]),
            t=int(pf.attrs.get("T_img", -1)),
            has_tokens=bool(pf.attrs.get("has_tokens", L.IMAGE_TOKENS in pf)),
            cls_dtype=str(pf[L.IMAGE_FEATURES].dtype),
        )


def _write_index_rows(f: h5py.File, h5: Path, facts: _PartFacts) -> None:
    """Give an open index the row datasets, feature VDS, attrs and meta a part describes."""
    ensure_skeleton(f)
    create_row_datasets(f, facts.plan.n_rows, facts.d, facts.t, facts.cls_dtype, facts.has_tokens, features=False)
    create_feature_vds(f, h5, facts.plan, facts.d, facts.t, facts.cls_dtype, facts.has_tokens)
    set_attrs(f, facts.attrs)
    set_attrs(f, {"layout": "sharded", "n_rows": facts.plan.n_rows, "n_written": 0})
    write_meta(f, L.META_PLAN, facts.plan.to_json())
    write_meta(f, L.META_PROVENANCE, facts.prov)


def create_index_from_part(h5: Path, part: Path) -> L.Plan:
    """Build a sharded index (rows, VDS, attrs, meta) from the attrs one part carries (multi-node runs)."""
    facts = _part_facts(part)
    tmp = h5.with_name(h5.name + L.PART_PARTIAL_SUFFIX)
    with h5py.File(tmp, "w") as f:
        _write_index_rows(f, h5, facts)
        write_meta(f, L.META_PROCESSOR, facts.prov.get("processor_config", {}) if isinstance(facts.prov, dict) else {})
    tmp.replace(h5)
    return facts.plan


def _copy_token_rows(src: h5py.Dataset, dst: h5py.Dataset, a: int, n: int) -> None:
    """Token rows of a part into rows [a, a+n) of the single file: raw chunk copies when both sides allow it.

    A part's (1, T, D) uncompressed chunks are byte-identical to the single file's, so they are copied as stored
    bytes (no decode, no float conversion, one row in memory at a time); a chunk never written stays unallocated
    and reads as the NaN fill.
    """
    if direct_chunk_ok(src) and direct_chunk_ok(dst) and src.chunks == dst.chunks:
        tail = (0,) * (src.ndim - 1)
        for i in range(n):
            try:
                mask, data = src.id.read_direct_chunk((i, *tail))
            except (OSError, KeyError, RuntimeError):
                continue  # unallocated (unwritten row): leave the fill
            dst.id.write_direct_chunk((a + i, *tail), data, filter_mask=mask)
        return
    for i in range(0, n, 64):
        dst[a + i:a + min(n, i + 64)] = src[i:min(n, i + 64)]


def materialize(h5: Path, out: Path, overwrite: bool = False) -> Path:
    """Write a self-contained single-layout copy of a sharded store (temp name, then rename); out == h5: in place.

    In place, the index is replaced by the single file and the part files are deleted only after the rename, so a
    kill at any moment leaves either the linked store or the finished single file (a rerun finishes the job).
    """
    out = Path(out)
    in_place = out.resolve() == h5.resolve()
    if out.exists() and not overwrite and not in_place:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".materialize" + L.PART_PARTIAL_SUFFIX)
    with open_h5(h5, "r") as src, h5py.File(tmp, "w") as dst:
        if not src[L.IMAGE_FEATURES].is_virtual:
            raise UsageError(f"{h5} is already a single self-contained file")
        plan = L.Plan.from_json(read_meta(src, L.META_PLAN))
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        dst.attrs["layout"] = "single"
        dst.attrs["materialized_from"] = "sharded"
        for name in (L.TEMPLATES, L.META):
            if name in src:
                src.copy(src[name], dst, name=name)
        d = int(src.attrs["D"])
        has_tokens = L.IMAGE_TOKENS in src
        t = int(src[L.IMAGE_TOKENS].shape[1]) if has_tokens else None
        create_row_datasets(dst, plan.n_rows, d, t, str(src[L.IMAGE_FEATURES].dtype), has_tokens)
        for name in L.SMALL_COLUMNS:
            data = src[name][...]
            if name == L.SPLIT:
                data = np.array(L.str_list(data), dtype=object)
            dst[name][...] = data
        for k in range(plan.n_parts):
            a, b = plan.part_range(k)
            part = L.part_path(h5, k)
            if not part.exists():
                continue
            with open_h5(part, "r") as pf:
                dst[L.IMAGE_FEATURES][a:b] = pf[L.IMAGE_FEATURES][...]
                if has_tokens:
                    _copy_token_rows(pf[L.IMAGE_TOKENS], dst[L.IMAGE_TOKENS], a, b - a)
        dst.flush()
    tmp.replace(out)
    if in_place:
        remove_part_files(h5)  # only after the rename: a kill before it leaves the linked store intact
    return out


def merge_store(h5: str | Path, materialize_to: str | Path | None = None, overwrite: bool = False) -> StoreMergeResult:
    """Check every planned part and rebuild the index's small columns, n_written and split_counts (rerunnable)."""
    t0 = time.perf_counter()
    h5 = Path(h5)
    if inspect_target(h5).kind not in (T.EMPTY, T.UNREADABLE):  # a damaged index is set aside below, once a part
        claim_target(h5)  # proves the store; anything else that is not a store is refused here
    index_ok = h5.exists() and try_open(h5) is not None
    if index_ok:
        with open_h5(h5, "r") as f:
            if L.SCHEMA_ATTR not in f.attrs:
                raise UsageError(f"{h5} is not an xaiclip store (no {L.SCHEMA_ATTR} attr)")
            layout = L.decode_str(f.attrs.get("layout", ""))
            plan_json = read_meta(f, L.META_PLAN)
            fp = L.decode_str(f.attrs.get("fingerprint", "")) or None
        if layout == "single":
            return _already_single(h5, t0)
    else:
        plan_json, fp = None, None
    if plan_json is None:
        part = _any_part(h5)
        if part is None:
            raise UsageError(f"no store at {h5} and no parts in {L.parts_dir(h5)}; run store image first")
        if h5.exists() and not index_ok:
            claim_target(h5)  # our parts prove the store: the damaged index is set aside (.damaged) and rebuilt
        if h5.exists():
            # A text-only store: add the rows to it.
            _add_rows_from_part(h5, part)
            with open_h5(h5, "r") as f:
                plan = L.Plan.from_json(read_meta(f, L.META_PLAN))
        else:
            plan = create_index_from_part(h5, part)
        with open_h5(h5, "r") as f:
            fp = L.decode_str(f.attrs.get("fingerprint", "")) or None
    else:
        plan = L.Plan.from_json(plan_json)
        relink_if_renamed(h5)
    # A finished part written by another model/settings is a user error, not a missing part.
    for k in range(plan.n_parts):
        p = L.part_path(h5, k)
        f = try_open(p) if p.exists() else None
        if f is not None:
            with f:
                if fp is not None and L.decode_str(f.attrs.get("fingerprint", "")) != fp:
                    raise UsageError(f"{p} was written with another model or settings than {h5}; "
                                     "delete it or rerun store image with --overwrite")
    statuses = refresh_index(h5, plan, fingerprint=fp)
    with open_h5(h5, "r") as f:
        n_done = int(f.attrs["n_written"])
        counts = L.read_json_attr(f.attrs, "split_counts", {})
    rows = [PartRow(part=k, rows=plan.part_range(k)[1] - plan.part_range(k)[0],
                    n_written=(plan.part_range(k)[1] - plan.part_range(k)[0]) if st == "complete" else 0, status=st)
            for k, st in statuses.items()]
    n_complete = sum(1 for st in statuses.values() if st == "complete")
    out = None
    in_place = materialize_to is not None and Path(materialize_to).resolve() == h5.resolve()
    if materialize_to is not None and (n_complete == plan.n_parts or not in_place):
        # In place only once complete: until then the parts are what makes the run resumable and crash-safe.
        out = str(materialize(h5, Path(materialize_to), overwrite=overwrite))
    result = StoreMergeResult(
        h5=str(h5), layout="single" if in_place and out else "sharded", rows_total=plan.n_rows, rows_done=n_done,
        parts_total=plan.n_parts, parts_complete=n_complete,
        complete=n_done == plan.n_rows, split_counts=counts, materialized=out,
        seconds=round(time.perf_counter() - t0, 3), parts=rows,
    )
    if n_complete < plan.n_parts:
        bad = [f"{L.part_name(k)} ({st})" for k, st in statuses.items() if st != "complete"]
        raise PartialFailure(f"merged {n_complete} of {plan.n_parts} parts of {h5}; not finished: "
                             f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; rerun store image to finish")
    return result


def _already_single(h5: Path, t0: float) -> StoreMergeResult:
    """A self-contained single-file store: nothing to merge, a no-op that says so (scripts may merge blindly)."""
    with open_h5(h5, "r") as f:
        n_done = int(f.attrs.get("n_written", 0))
        n_rows = int(f[L.WRITTEN].shape[0]) if L.WRITTEN in f else n_done
        counts = L.read_json_attr(f.attrs, "split_counts", {})
    message = f"{h5} is already one self-contained file; nothing to merge"
    log.info(message)
    return StoreMergeResult(
        h5=str(h5), layout="single", rows_total=n_rows, rows_done=n_done, parts_total=1,
        parts_complete=1 if n_done == n_rows else 0, complete=n_done == n_rows, split_counts=counts,
        seconds=round(time.perf_counter() - t0, 3),
        message=message,
    )


def relink_if_renamed(h5: Path) -> None:
    """Point the index's VDS at ``<stem>.parts`` after a rename of index + folder; refuse a half rename."""
    with open_h5(h5, "r") as f:
        pdir = stale_parts_dir(h5, f)
        folder = linked_folder(f)
    if pdir is not None:
        with open_h5(h5, "r+") as f:
            n = relink(f, pdir.name)
            f.flush()
        log.warning("%s was renamed: relinked its %d part sources from %s/ to %s/", h5, n, folder, pdir.name)
    elif folder and folder != L.parts_dir(h5).name and not L.parts_dir(h5).exists():
        raise UsageError(f"{h5} links its parts in {folder}/, but merge looks for {L.parts_dir(h5).name}/: rename "
                         f"the folder to {L.parts_dir(h5).name} (a store is renamed together with its parts folder)")


def _add_rows_from_part(h5: Path, part: Path) -> None:
    """Give a text-only index the row datasets and attrs described by a part."""
    facts = _part_facts(part)
    with open_h5(h5, "r+") as f:
        if "model_fingerprint" in f.attrs and L.decode_str(f.attrs["model_fingerprint"]) != \
                L.decode_str(facts.attrs.get("model_fingerprint", "")):
            raise UsageError(f"{part} was written with another model than the templates of {h5}")
        _write_index_rows(f, h5, facts)
