"""The text stage: prompt set → template groups (concept_/label_prompts_tNN), encoded, skipped by hash."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xaiclip_cli.errors import UsageError
from xaiclip_cli.store import layout as L
from xaiclip_cli.store.index import check_model, ensure_skeleton, remove_store, write_meta
from xaiclip_cli.store.provenance import StoreIdentity, identity_from_backend
from xaiclip_cli.store.results import StoreTextResult, TextGroupRow
from xaiclip_cli.store.target import claim_target
from xaiclip_cli.store.writer import open_h5, set_attrs, try_open

log = logging.getLogger("xaiclip.store")


@dataclass(frozen=True)
class PromptLists:
    """The four seed lists: label names, label templates, concept names, concept templates."""

    labels: list[str]
    label_templates: list[str]
    concepts: list[str]
    concept_templates: list[str]
    name: str = "prompts"


@dataclass(frozen=True)
class TemplateGroup:
    """One group to write: its name, kind, template and texts (template.format(item) in item order)."""

    name: str
    kind: str
    template: str
    texts: list[str]


def _list(obj: Any, *names: str) -> list[str] | None:
    for n in names:
        v = getattr(obj, n, None)
        if callable(v):
            try:
                v = v()
            except TypeError:
                continue
        if v is not None and not isinstance(v, str):
            return [str(x) for x in v]
    return None


def prompt_lists(ps: Any) -> PromptLists:
    """Read the four lists from a PromptSet (data/prompts.py) or any object/dict with the same names."""
    if isinstance(ps, PromptLists):
        return ps
    if isinstance(ps, dict):
        from types import SimpleNamespace

        ps = SimpleNamespace(**ps)
    labels = _list(ps, "labels", "label_texts", "class_names")
    label_t = _list(ps, "label_templates", "prompt_temp_for_labels")
    concepts = _list(ps, "concepts", "concept_texts")
    concept_t = _list(ps, "concept_templates", "prompt_temp_for_concepts")
    return PromptLists(labels or [], label_t or [], concepts or [], concept_t or [],
                       name=str(getattr(ps, "name", "prompts")))


def template_map(lists: PromptLists) -> list[TemplateGroup]:
    """All groups in write order: concept templates then label templates; text = template.format(item)."""
    groups = []
    for kind, items, templates in (("concept", lists.concepts, lists.concept_templates),
                                   ("label", lists.labels, lists.label_templates)):
        if templates and not items:
            raise UsageError(f"prompt set {lists.name}: {len(templates)} {kind} templates but an empty {kind} list")
        if items and not templates:
            raise UsageError(f"prompt set {lists.name}: {kind} list given without {kind} templates")
        for i, t in enumerate(templates):
            if "{}" not in t and "{0}" not in t:
                raise UsageError(f"prompt set {lists.name}: {kind} template {t!r} has no {{}} placeholder")
            groups.append(TemplateGroup(L.template_group_name(kind, i), kind, t, [t.format(x) for x in items]))
    if not groups:
        raise UsageError(f"prompt set {lists.name} has no label or concept prompts")
    return groups


def group_fingerprint(identity: StoreIdentity, max_length: int, tokens: bool) -> str:
    """What a group's features depend on besides its texts: the model, the text length, tokens stored."""
    return L.fingerprint_of({"model": identity.model_fingerprint(), "max_length": max_length, "tokens": tokens})


def encode_group(backend: Any, texts: Sequence[str], max_length: int, batch_size: int, tokens: bool) -> dict[str, Any]:
    """One tokenizer call for the group; encode in batches; normalised CLS, projected tokens, mask, lengths."""
    import torch

    ids, mask = backend.tokenize(list(texts), max_length=max_length)
    feats, toks = [], []
    with torch.inference_mode():
        for a in range(0, len(texts), batch_size):
            g, t = backend.encode_text(ids[a:a + batch_size], mask[a:a + batch_size])
            feats.append(g.float().cpu().numpy())
            if tokens and t is not None:
                toks.append(t.float().cpu().numpy())
    mask_np = mask.cpu().numpy().astype(np.uint8)
    return {
        L.TEXT_FEATURES: np.concatenate(feats).astype(np.float32),
        L.TEXT_TOKENS: np.concatenate(toks).astype(np.float32) if toks else None,
        L.ATTENTION_MASK: mask_np,
        L.LENGTHS: mask_np.sum(axis=1).astype(np.int32),
    }


def _write_group(f: h5py.File, g: TemplateGroup, enc: dict[str, Any], fp: str, max_length: int) -> None:
    """Write a group under a temporary name, then swap it in (a crash never leaves a half group under the name)."""
    templates = f[L.TEMPLATES]
    tmp = f"~{g.name}.tmp"
    if tmp in templates:
        del templates[tmp]
    grp = templates.create_group(tmp)
    grp.create_dataset(L.TEXT_FEATURES, data=enc[L.TEXT_FEATURES])
    tok = enc[L.TEXT_TOKENS]
    if tok is not None:
        grp.create_dataset(L.TEXT_TOKENS, data=tok)
    grp.create_dataset(L.TEXTS, data=np.array(g.texts, dtype=object), dtype=L.string_dtype())
    grp.create_dataset(L.ATTENTION_MASK, data=enc[L.ATTENTION_MASK])
    grp.create_dataset(L.LENGTHS, data=enc[L.LENGTHS])
    set_attrs(grp, {
        "K": len(g.texts), "D": int(enc[L.TEXT_FEATURES].shape[1]),
        "T_txt": int(tok.shape[1]) if tok is not None else -1,
        "texts_hash": L.texts_hash(g.texts), "created_at": L.now_str(), "template": g.template, "kind": g.kind,
        "max_length": int(max_length), "fingerprint": fp,
    })
    if g.name in templates:
        del templates[g.name]
    templates.move(tmp, g.name)


def _set_prompt_attrs(f: h5py.File, lists: PromptLists, warn: list[str]) -> None:
    values = {"label_texts": lists.labels, "prompt_temp_for_labels": lists.label_templates,
              "concept_texts": lists.concepts, "prompt_temp_for_concepts": lists.concept_templates}
    for name, v in values.items():
        text = L.json_attr(v)
        write_meta(f, name, v)
        if L.attr_fits(text):
            f.attrs[name] = text
        else:
            if name in f.attrs:
                del f.attrs[name]
            warn.append(f"{name} is too large for an HDF5 attribute; stored only in meta/{name} "
                        "(seed concept filtering is unavailable)")


def run_text_stage(lists: Any, backend: Any, h5: str | Path, *, only: Sequence[str] = (), clear: bool = False,
                   force: bool = False, overwrite: bool = False, tokens: bool = True,
                   max_length: int | None = None, batch_size: int = 64) -> StoreTextResult:
    """Encode the template map of a prompt set into templates/ of the store; unchanged groups are skipped."""
    t0 = time.perf_counter()
    h5 = Path(h5)
    lists = prompt_lists(lists)
    groups = template_map(lists)
    names = [g.name for g in groups]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UsageError(f"--only: {', '.join(unknown)} not in the prompt set's groups ({', '.join(names)})")
    max_len = int(max_length or getattr(backend, "context_length", 77) or 77)
    identity = identity_from_backend(backend, has_tokens=tokens)
    fp = group_fingerprint(identity, max_len, tokens)
    warnings: list[str] = []
    # Refuses what is not provably a store (exit 2, file untouched); --overwrite sets an unreadable store aside.
    claim_target(h5, overwrite=overwrite, rebuild=False)
    if h5.exists():
        f0 = try_open(h5)
        if f0 is not None:
            with f0:
                try:
                    check_model(f0, h5, identity, rows=False)
                except UsageError:
                    if not overwrite:
                        raise
                    f0.close()
                    log.warning("--overwrite: deleting %s (written by another model)", h5)
                    remove_store(h5)
                    force = True
    if overwrite:
        force = True
    h5.parent.mkdir(parents=True, exist_ok=True)
    rows: list[TextGroupRow] = []
    written = skipped = removed = 0
    with open_h5(h5, "a") as f:
        ensure_skeleton(f)
        if L.SCHEMA_ATTR not in f.attrs:
            set_attrs(f, identity.model_attrs())
            write_meta(f, L.META_PROVENANCE, identity.provenance)
            write_meta(f, L.META_PROCESSOR, identity.processor_config)
        if "dataset" not in f.attrs:
            f.attrs["dataset"] = L.json_attr(lists.name)
        if clear:
            del f[L.TEMPLATES]
            f.create_group(L.TEMPLATES)
        _set_prompt_attrs(f, lists, warnings)
        templates = f[L.TEMPLATES]
        for name in list(templates.keys()):
            if name not in names:
                del templates[name]
                removed += 1
        for g in groups:
            existing = templates.get(g.name)
            selected = not only or g.name in only
            same = existing is not None and L.decode_str(existing.attrs.get("texts_hash", "")) == L.texts_hash(
                g.texts) and L.decode_str(existing.attrs.get("fingerprint", "")) == fp
            if not selected or (same and not force):
                skipped += 1
                status = "unchanged" if same else "not selected"
                T = int(existing.attrs.get("T_txt", -1)) if existing is not None else -1
                rows.append(TextGroupRow(group=g.name, kind=g.kind, K=len(g.texts), T_txt=T, status=status))
                continue
            enc = encode_group(backend, g.texts, max_len, batch_size, tokens)
            _write_group(f, g, enc, fp, max_len)
            f.flush()
            written += 1
            tok = enc[L.TEXT_TOKENS]
            rows.append(TextGroupRow(group=g.name, kind=g.kind, K=len(g.texts),
                                     T_txt=int(tok.shape[1]) if tok is not None else -1, status="written"))
        f.flush()
    return StoreTextResult(h5=str(h5), written=written, skipped=skipped, removed=removed,
                           seconds=round(time.perf_counter() - t0, 3), warnings=warnings,
                           groups=rows)
