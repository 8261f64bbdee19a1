"""Per-patient pooled pre-logit features of a trained classifier (`train extract`) and modality alignment."""

from __future__ import annotations

import csv
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiclip_cli.errors import UsageError
from xaiclip_cli.train.data import SPLITS, FileSplit, prepare_batch, split_csv_paths
from xaiclip_cli.train.model import model_from_checkpoint
from xaiclip_cli.train.split import read_split_csv, write_csv
from xaiclip_cli.train.tree import natural_key

log = logging.getLogger("xaiclip.train")

FEATURE_COLUMNS = ["patient_id", "feature_path", "label", "num_slices"]


@torch.no_grad()
def slice_features(model: torch.nn.Module, ds: FileSplit, indices: list[int], meta: dict[str, Any],
                   batch_size: int, device: torch.device) -> np.ndarray:
    """Pooled pre-logit features [n, m] of the slices ``indices`` (timm ``forward_head(pre_logits=True)``)."""
    out = []
    for i in range(0, len(indices), batch_size):
        images = ds.load(indices[i:i + batch_size]).to(device)
        x = prepare_batch(images, meta["image_size"], meta["in_chans"], meta["mean"], meta["std"],
                          interpolation=meta.get("interpolation", "bilinear"))
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        out.append(feats.float().flatten(1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def extract_features(
    checkpoint: Path,
    modality: str,
    split_dir: Path,
    output_dir: Path,
    batch_size: int = 64,
    device: torch.device | None = None,
    expected_model: str | None = None,
    overwrite: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Write ``{split}/{modality}/grade{k}/{patient}.npy`` and ``{split}/features_{modality}.csv`` for each split."""
    device = device or torch.device("cpu")
    model, meta = model_from_checkpoint(Path(checkpoint))
    if expected_model is not None and expected_model not in (meta["arch"], meta.get("model_name")):
        raise UsageError(
            f"--model {expected_model} conflicts with checkpoint {checkpoint} ({meta['arch']}); drop --model"
        )
    model.to(device)
    output_dir = Path(output_dir)
    counts: dict[str, dict[str, int]] = {}
    csvs = [output_dir / s / f"features_{modality}.csv" for s in SPLITS]
    if not overwrite and any(c.exists() for c in csvs):
        raise UsageError(f"{next(c for c in csvs if c.exists())} exists; pass --overwrite to replace features")
    dim = 0
    for split, path in split_csv_paths(split_dir, modality).items():
        rows = read_split_csv(path)
        ds = FileSplit(rows, meta["image_size"], meta["in_chans"])
        by_patient: OrderedDict[str, list[int]] = OrderedDict()
        for i, r in enumerate(rows):
            by_patient.setdefault(str(r["patient_id"]), []).append(i)
        info = []
        for pid, idx in by_patient.items():
            idx = sorted(idx, key=lambda i: natural_key(Path(ds.paths[i]).name))
            labels = {int(ds.labels[i]) for i in idx}
            if len(labels) != 1:
                raise UsageError(f"patient {pid} has several labels in {path}")
            label = labels.pop()
            feats = slice_features(model, ds, idx, meta, batch_size, device)
            dim = feats.shape[1]
            rel = Path(split) / modality / f"grade{label}" / f"{pid}.npy"
            _save_npy(output_dir / rel, feats)
            info.append({"patient_id": pid, "feature_path": rel.as_posix(), "label": label, "num_slices": len(idx)})
            if progress is not None:
                progress(1)
        write_csv(output_dir / split / f"features_{modality}.csv", info, FEATURE_COLUMNS)
        counts[split] = {"patients": len(info), "slices": len(rows)}
    return {"modality": modality, "feature_dim": dim, "arch": meta["arch"], "counts": counts,
            "output_dir": str(output_dir)}


def _read_features(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def align_modalities(feature_dir: Path, modalities: list[str]) -> dict[str, Any]:
    """Per split, inner-join the modality feature CSVs on patient_id (labels must agree) -> aligned/ + dropped.csv."""
    feature_dir = Path(feature_dir)
    out: dict[str, Any] = {}
    for split in SPLITS:
        paths = {m: feature_dir / split / f"features_{m}.csv" for m in modalities}
        present = [m for m, p in paths.items() if p.is_file()]
        if not present:
            continue
        missing = [str(p) for m, p in paths.items() if not p.is_file()]
        if missing:
            raise UsageError(f"--align needs {missing[0]}; run `train extract` for every modality first")
        tables = {m: {r["patient_id"]: r for r in _read_features(p)} for m, p in paths.items()}
        all_ids = sorted({pid for t in tables.values() for pid in t}, key=natural_key)
        aligned, dropped = [], []
        for pid in all_ids:
            lacking = [m for m in modalities if pid not in tables[m]]
            if lacking:
                dropped.append({"patient_id": pid, "reason": f"missing modality {','.join(lacking)}"})
                continue
            labels = {tables[m][pid]["label"] for m in modalities}
            if len(labels) != 1:
                dropped.append({"patient_id": pid, "reason": f"labels disagree: {sorted(labels)}"})
                continue
            row: dict[str, Any] = {"patient_id": pid, "label": labels.pop()}
            for m in modalities:
                row[f"feature_path_{m}"] = tables[m][pid]["feature_path"]
            for m in modalities:
                row[f"num_slices_{m}"] = tables[m][pid]["num_slices"]
            aligned.append(row)
        cols = ["patient_id", "label", *[f"feature_path_{m}" for m in modalities],
                *[f"num_slices_{m}" for m in modalities]]
        write_csv(feature_dir / split / "aligned" / "aligned.csv", aligned, cols)
        write_csv(feature_dir / split / "aligned" / "dropped.csv", dropped, ["patient_id", "reason"])
        out[split] = {"aligned": len(aligned), "dropped": len(dropped)}
    if not out:
        raise UsageError(f"no feature CSVs under {feature_dir}; run `train extract` first")
    return out
