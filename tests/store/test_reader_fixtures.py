"""Test stores built with plain h5py straight from store.md (single and sharded-with-VDS), plus checks of them.

Independent of the production writer on purpose: the reader and `db verify` are tested against the spec, and the
writer can later be compared against the same expectations.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
CONCEPTS = ["Segmented nucleus", "Band nucleus (band form)", "Reniform / indented nucleus", "Ünïcode, with comma"]
LABELS = ["basophil", "eosinophil", "lymphocyte"]
CONCEPT_TEMPLATES = ["a cell photo with sign of {}", "blood cell with {}"]
LABEL_TEMPLATES = ["a microscopic image of a {} cell"]
FINGERPRINT = "f" * 64


@dataclass
class Truth:
    """What a built store holds, for asserting reads against."""

    path: Path
    n: int
    d: int
    t: int
    cls: np.ndarray
    tokens: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    written: np.ndarray
    templates: dict[str, dict[str, np.ndarray | list[str]]] = field(default_factory=dict)
    parts: list[Path] = field(default_factory=list)

    def split_rows(self, split: str) -> np.ndarray:
        """Written rows of a split, in row order."""
        m = self.written.copy()
        if split != "all":
            m &= self.split == split
        return np.flatnonzero(m)


def texts_hash(texts: list[str]) -> str:
    """store.md §7 (seed definition), written out again on purpose."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\x00")
    return h.hexdigest()


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _write_templates(f: h5py.File, d: int, rng: np.random.Generator, truth: Truth, text_tokens: bool = True) -> None:
    tg = f.create_group("templates")
    sdt = h5py.string_dtype("utf-8")
    groups = [("concept", i, t, CONCEPTS) for i, t in enumerate(CONCEPT_TEMPLATES)]
    groups += [("label", i, t, LABELS) for i, t in enumerate(LABEL_TEMPLATES)]
    for kind, i, template, items in groups:
        name = f"{kind}_prompts_t{i + 1:02d}"
        texts = [template.format(x) for x in items]
        k, t_txt = len(texts), 5
        g = tg.create_group(name)
        feats = _unit(rng.normal(size=(k, d)))
        g.create_dataset("text_features", data=feats)
        toks = rng.normal(size=(k, t_txt, d)).astype(np.float32)
        if text_tokens:
            g.create_dataset("text_token_features", data=toks)
        g.create_dataset("texts", data=texts, dtype=sdt)
        lengths = np.array([3 + (j % 3) for j in range(k)], dtype=np.int32)
        mask = (np.arange(t_txt)[None, :] < lengths[:, None]).astype(np.uint8)
        g.create_dataset("attention_mask", data=mask)
        g.create_dataset("lengths", data=lengths)
        g.attrs.update({"K": k, "D": d, "T_txt": t_txt if text_tokens else -1, "texts_hash": texts_hash(texts),
                        "created_at": "2025-01-01 00:00:00", "template": template, "kind": kind, "max_length": 77,
                        "fingerprint": FINGERPRINT})
        truth.templates[name] = {"text": feats, "tokens": toks, "texts": texts}


def _root_attrs(f: h5py.File, truth: Truth, layout: str, tokens: bool) -> None:
    w = truth.written
    counts = {s: int(np.count_nonzero(w & (truth.split == s))) for s in SPLIT_CODES}
    f.attrs.update({
        "D": truth.d, "T_img": truth.t, "created_at": "2025-01-01 00:00:00", "version": "1.0",
        "split_counts": json.dumps(counts), "logit_scale": 4.5706, "logit_bias": float("nan"),
        "concept_logit_scale": 4.5115, "concept_logit_bias": float("nan"),
        "label_texts": json.dumps(LABELS, ensure_ascii=False),
        "prompt_temp_for_labels": json.dumps(LABEL_TEMPLATES, ensure_ascii=False),
        "concept_texts": json.dumps(CONCEPTS, ensure_ascii=False),
        "prompt_temp_for_concepts": json.dumps(CONCEPT_TEMPLATES, ensure_ascii=False),
        "dataset": json.dumps("toycells"),
        "schema_version": "xaiclip-store/1", "xaiclip_version": "0.1.0", "model_id": "toy-vit",
        "model_revision": "abc", "lib_versions": json.dumps({"h5py": h5py.__version__}), "cls_dtype": "float32",
        "token_dtype": "float16", "cls_normalized": True, "tokens_projected": True, "tokens_normalized": False,
        "has_tokens": tokens, "logit_scale_exp": float(np.exp(4.5706)),
        "concept_logit_scale_exp": float(np.exp(4.5115)),
        "layout": layout, "n_rows": truth.n, "n_written": int(w.sum()), "fingerprint": FINGERPRINT,
        "model_input_size": 32,
    })


def _small_columns(g: h5py.Group, truth: Truth, rows: slice) -> None:
    w = truth.written[rows]
    split = np.where(w, truth.split[rows], "")
    codes = np.array([SPLIT_CODES.get(s, 255) for s in split], dtype=np.uint8)
    src = np.full(w.size, -1, dtype=np.int32)
    for s in SPLIT_CODES:
        all_rows = np.flatnonzero(truth.split == s)
        if all_rows.size == 0:
            continue
        sel = np.flatnonzero(w & (truth.split[rows] == s))
        src[sel] = (np.arange(truth.n)[rows][sel] - all_rows[0]).astype(np.int32)
    n = w.size
    sdt = h5py.string_dtype("utf-8")
    ch = (min(4096, max(1, n)),)
    g.create_dataset("ids", data=np.where(w, truth.ids[rows], -1), dtype=np.int64, chunks=ch, fillvalue=-1)
    g.create_dataset("labels", data=np.where(w, truth.labels[rows], -1), dtype=np.int64, chunks=ch, fillvalue=-1)
    g.create_dataset("split", data=split.tolist(), dtype=sdt, chunks=ch)
    g.create_dataset("written", data=w, dtype=bool, chunks=ch, fillvalue=False)
    g.create_dataset("source_split", data=codes, chunks=ch, fillvalue=255)
    g.create_dataset("source_index", data=src, chunks=ch, fillvalue=-1)
    g.create_dataset("image_hash", data=np.zeros((n, 16), np.uint8), chunks=(ch[0], 16))


def _features(g: h5py.Group, truth: Truth, rows: slice, tokens: bool) -> None:
    w = truth.written[rows]
    cls = truth.cls[rows].copy()
    cls[~w] = np.nan
    n = w.size
    g.create_dataset("image_features", data=cls, chunks=(min(64, max(1, n)), truth.d), fillvalue=np.nan)
    if tokens:
        tok = truth.tokens[rows].copy()
        tok[~w] = np.nan
        g.create_dataset("image_token_features", data=tok, chunks=(1, truth.t, truth.d), fillvalue=np.nan)


def build_store(
    path: str | Path,
    layout: str = "single",
    split_sizes: tuple[int, int, int] = (6, 3, 5),
    d: int = 8,
    t: int = 6,
    part_rows: int = 4,
    n_written: int | None = None,
    tokens: bool = True,
    partial_part: int | None = None,
    seed: int = 0,
) -> Truth:
    """Write a store following store.md exactly; ``n_written`` keeps only the first rows written (a prefix),
    ``partial_part`` writes that part under its `.partial` name with its rows unwritten in the index."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    n = sum(split_sizes)
    split = np.array(["train"] * split_sizes[0] + ["val"] * split_sizes[1] + ["test"] * split_sizes[2], dtype=object)
    written = np.ones(n, dtype=bool)
    if n_written is not None:
        written[n_written:] = False
    if partial_part is not None:
        written[partial_part * part_rows:(partial_part + 1) * part_rows] = False
    truth = Truth(
        path=path, n=n, d=d, t=t,
        cls=_unit(rng.normal(size=(n, d))),
        tokens=rng.normal(size=(n, t, d)).astype(np.float16),
        ids=np.arange(n, dtype=np.int64),
        labels=rng.integers(0, len(LABELS), size=n).astype(np.int64),
        split=split, written=written,
    )
    if layout == "single":
        with h5py.File(path, "w") as f:
            _features(f, truth, slice(0, n), tokens)
            _small_columns(f, truth, slice(0, n))
            _root_attrs(f, truth, "single", tokens)
            _write_templates(f, d, rng, truth)
            f.create_group("meta").create_dataset("plan", data=json.dumps({"part_rows": part_rows}),
                                                  dtype=h5py.string_dtype("utf-8"))
        return truth
    parts_dir = path.with_name(path.stem + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    n_parts = -(-n // part_rows)
    cls_lay = h5py.VirtualLayout((n, d), np.float32)
    tok_lay = h5py.VirtualLayout((n, t, d), np.float16)
    for k in range(n_parts):
        a, b = k * part_rows, min(n, (k + 1) * part_rows)
        rel = f"{parts_dir.name}/part-{k:05d}.h5"
        cls_lay[a:b] = h5py.VirtualSource(rel, "image_features", shape=(b - a, d))
        tok_lay[a:b] = h5py.VirtualSource(rel, "image_token_features", shape=(b - a, t, d))
        if not truth.written[a:b].any() and k != partial_part:
            continue  # not started
        final = parts_dir / f"part-{k:05d}.h5"
        target = final.with_name(final.name + ".partial") if k == partial_part else final
        sub = Truth(**{**truth.__dict__})
        if k == partial_part:  # half of it on disk, not yet complete
            sub.written = truth.written.copy()
            sub.written[a:a + (b - a) // 2] = True
        with h5py.File(target, "w") as p:
            _features(p, sub, slice(a, b), tokens)
            _small_columns(p, sub, slice(a, b))
            p.attrs.update({"row_start": a, "row_stop": b, "fingerprint": FINGERPRINT,
                            "n_written": int(sub.written[a:b].sum()), "complete": k != partial_part})
        truth.parts.append(final)
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("image_features", cls_lay, fillvalue=np.nan)
        if tokens:
            f.create_virtual_dataset("image_token_features", tok_lay, fillvalue=np.nan)
        _small_columns(f, truth, slice(0, n))
        _root_attrs(f, truth, "sharded", tokens)
        _write_templates(f, d, rng, truth)
        f.create_group("meta")
    return truth


# ---------------------------------------------------------------------------------------------- checks of the builder
def test_single_store_matches_spec(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5", n_written=10)
    with h5py.File(tr.path, "r") as f:
        assert f["image_features"].shape == (14, 8) and f["image_features"].dtype == np.float32
        assert f["image_token_features"].chunks == (1, 6, 8)
        assert f["ids"][10] == -1 and f["split"][12] == b"" and np.isnan(f["image_features"][13]).all()
        assert json.loads(f.attrs["split_counts"]) == {"train": 6, "val": 3, "test": 1}
        assert f["source_index"][9] == 0 and f["source_split"][9] == 2


def test_sharded_store_reads_through_vds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tr = build_store(tmp_path / "s.h5", layout="sharded")
    monkeypatch.chdir(tmp_path.parent)  # relative sources resolve beside the index, not the working directory
    with h5py.File(tr.path, "r") as f:
        assert f["image_features"].is_virtual
        np.testing.assert_array_equal(f["image_features"][5], tr.cls[5])
        np.testing.assert_array_equal(f["image_token_features"][13], tr.tokens[13])
    assert [p.name for p in tr.parts] == ["part-00000.h5", "part-00001.h5", "part-00002.h5", "part-00003.h5"]
