"""Patient-level train/val/test split of the reference tree, its leakage check and the split CSVs."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.train.tree import Patient, scan_tree

log = logging.getLogger("xaiclip.train")

SPLIT_COLUMNS = ["image_path", "label", "patient_id", "hospital", "modality", "split"]


def assign_splits(
    patients: dict[str, Patient], internal_hospital: str, train_ratio: float, seed: int
) -> dict[str, str]:
    """Patient id -> split: internal patients stratified train/val (sorted ids, sklearn), all others test."""
    from sklearn.model_selection import train_test_split

    internal = sorted(pid for pid, p in patients.items() if p.hospital == internal_hospital)
    if not internal:
        raise UsageError(f"no patients of internal hospital {internal_hospital!r}; check --internal-hospital")
    labels = [patients[pid].label for pid in internal]
    counts = Counter(labels)
    few = {k: n for k, n in sorted(counts.items()) if n < 2}
    if few:
        raise UsageError(
            f"each class of {internal_hospital} needs >= 2 patients for a stratified split; grade(s) "
            + ", ".join(f"{k} has {n}" for k, n in few.items())
        )
    try:
        train_ids, val_ids = train_test_split(
            internal, train_size=train_ratio, stratify=labels, random_state=seed, shuffle=True
        )
    except ValueError as exc:
        raise UsageError(f"cannot split {len(internal)} patients with --train-ratio {train_ratio}: {exc}") from exc
    out = {pid: "test" for pid, p in patients.items() if p.hospital != internal_hospital}
    out.update({pid: "train" for pid in train_ids})
    out.update({pid: "val" for pid in val_ids})
    return out


def split_rows(patients: dict[str, Patient], assignment: dict[str, str], modalities: list[str]) -> list[dict[str, Any]]:
    """One row per slice and modality, in patient then natural slice order."""
    rows: list[dict[str, Any]] = []
    for pid in sorted(assignment):
        p = patients[pid]
        for mod in modalities:
            for f in p.slices[mod]:
                rows.append({"image_path": str(f), "label": p.label, "patient_id": pid, "hospital": p.hospital,
                             "modality": mod, "split": assignment[pid]})
    return rows


def check_leakage(rows: list[dict[str, Any]], internal_hospital: str) -> None:
    """Raise when a patient is in two splits, differs between modalities, or test != non-internal hospital."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        seen[str(r["patient_id"])].add(str(r["split"]))
        is_test = r["split"] == "test"
        if is_test != (r["hospital"] != internal_hospital):
            raise XaiclipError(
                f"split leakage: patient {r['patient_id']} of {r['hospital']} is in {r['split']} "
                f"(test must be exactly the non-{internal_hospital} hospitals)"
            )
    leaked = sorted(pid for pid, splits in seen.items() if len(splits) > 1)
    if leaked:
        raise XaiclipError(f"split leakage: patients in several splits: {', '.join(leaked[:10])}")


def read_split_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of one split CSV (label as int)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["label"] = int(r["label"])
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Patients and slices per split x label x hospital (and per modality for slices)."""
    patients: dict[str, dict[str, dict[str, set[str]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(set)))
    slices: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        patients[r["split"]][str(r["label"])][r["hospital"]].add(r["patient_id"])
        slices[r["split"]][f"{r['modality']}/grade{r['label']}/{r['hospital']}"] += 1
    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        per = patients.get(split, {})
        out[split] = {
            "patients": sum(len(ids) for lab in per.values() for ids in lab.values()),
            "patients_by_label_hospital": {lab: {h: len(ids) for h, ids in sorted(hs.items())}
                                           for lab, hs in sorted(per.items())},
            "slices": sum(slices.get(split, Counter()).values()),
            "slices_by_modality_label_hospital": dict(sorted(slices.get(split, Counter()).items())),
        }
    return out


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write rows atomically (temp name then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def make_split(
    root: Path,
    modalities: list[str],
    internal_hospital: str,
    train_ratio: float,
    seed: int,
    output_dir: Path,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Scan, split per patient, check leakage, write {split}_{modality}.csv and split_summary.json; return a summary."""
    output_dir = Path(output_dir)
    targets = [output_dir / f"{s}_{m}.csv" for s in ("train", "val", "test") for m in modalities]
    targets.append(output_dir / "split_summary.json")
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists; pass --overwrite to replace the split")
    patients, dropped = scan_tree(Path(root), modalities)
    assignment = assign_splits(patients, internal_hospital, train_ratio, seed)
    rows = split_rows(patients, assignment, modalities)
    check_leakage(rows, internal_hospital)
    for split in ("train", "val", "test"):
        for mod in modalities:
            part = [r for r in rows if r["split"] == split and r["modality"] == mod]
            write_csv(output_dir / f"{split}_{mod}.csv", part, SPLIT_COLUMNS)
    summary = {"root_dir": str(root), "modalities": modalities, "internal_hospital": internal_hospital,
               "train_ratio": train_ratio, "seed": seed, "splits": summarize(rows), "dropped": dropped}
    tmp = output_dir / ".split_summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    tmp.replace(output_dir / "split_summary.json")
    if dropped:
        write_csv(output_dir / "dropped_patients.csv", dropped, ["patient_id", "hospital", "label", "reason"])
    return summary
