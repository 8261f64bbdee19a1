"""A small synthetic patient tree ``<root>/<hospital>/[fold*/]grade<k>/<patient>/<modality>/*.png`` from toy cells.

Hand-written because the reference tree is private clinical data: this one is derived, deterministically from a
seed, from the shipped toy cells (``xaiclip_cli.data.toycells``) so that the grade is learnable: grade0 patients'
slices show lymphocytes, grade1 patients' slices neutrophils. Modality A is the luminance of the RGB cell image,
modality P the inverted green channel (a different contrast of the same kind of cell); slices are 64x64 grey PNGs.
Hospital JM is internal (patients spread over fold1/fold2, one patient's modalities split across both folds, which
`train split` merges); EXT1 and EXT2 are external. A few patients deliberately lack one modality, so the
all-modalities rule of `train split` drops them. ``toy_tree.json`` at the root records what was written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError

INTERNAL = "JM"
EXTERNAL = ("EXT1", "EXT2")
MODALITIES = ("A", "P")
GRADE_CELLS = {0: "lymphocyte", 1: "neutrophil"}
MANIFEST = "toy_tree.json"
MIN_PATIENTS = 16


def hospital_counts(n_patients: int) -> dict[str, int]:
    """Patients per hospital: two thirds internal (an even number), the rest shared by the external hospitals."""
    internal = max(8, 2 * round(n_patients / 3))
    rest = n_patients - internal
    first = rest - rest // 2
    return {INTERNAL: internal, EXTERNAL[0]: first, EXTERNAL[1]: rest // 2}


def to_grey(rgb: np.ndarray, modality: str) -> np.ndarray:
    """uint8 RGB [..., 3] -> uint8 grey: A = luminance (ITU-R 601), P = inverted green channel."""
    if modality == "A":
        grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    if modality == "P":
        return (255 - rgb[..., 1]).astype(np.uint8)
    raise ValueError(f"unknown toy modality {modality!r}")


class _CellPool:
    """Cells of one class drawn without replacement in a seeded order; rotated/flipped copies once exhausted."""

    def __init__(self, images: np.ndarray, rng: np.random.Generator) -> None:
        self.images = images
        self.order = rng.permutation(len(images))
        self.next = 0

    def draw(self) -> np.ndarray:
        i = self.next
        self.next += 1
        img = self.images[self.order[i % len(self.order)]]
        variant = (i // len(self.order)) % 8  # the 8 symmetries of the square keep later copies distinct
        img = np.rot90(img, variant % 4)
        return np.ascontiguousarray(img[:, ::-1] if variant >= 4 else img)


def _cells_by_grade(toycells: Path | None, rng: np.random.Generator) -> dict[int, _CellPool]:
    from xaiclip_cli.data.toycells import TOYCELLS_CLASSES, ToyCellsSource

    src = ToyCellsSource(toycells)
    pools = {}
    for grade, cell in GRADE_CELLS.items():
        k = TOYCELLS_CLASSES.index(cell)
        parts = [src.images(s)[src.labels(s).reshape(-1) == k] for s in ("train", "val", "test")]
        pools[grade] = _CellPool(np.concatenate(parts), rng)
    return pools


def plan_patients(n_patients: int, seed: int = 0) -> list[dict[str, Any]]:
    """Who is where: id, hospital, fold, grade, slices per modality (0 = missing modality), split-fold marker."""
    rng = np.random.default_rng([seed, 1])
    plan: list[dict[str, Any]] = []
    for hospital, n in hospital_counts(n_patients).items():
        internal = hospital == INTERNAL
        offset = 1 if hospital == EXTERNAL[1] else 0  # EXT2 starts with grade1: both grades balanced in test
        for i in range(n):
            grade = (i + offset) % 2
            slices = {m: int(rng.integers(2, 5)) for m in MODALITIES}
            if internal and i % 7 == 6:  # indices 6, 13, ...: both grades lose modality P
                slices["P"] = 0
            if hospital == EXTERNAL[0] and i == 2:
                slices["A"] = 0
            plan.append({"patient_id": f"{hospital}{i + 1:03d}", "hospital": hospital, "grade": grade,
                         "fold": f"fold{1 + (i // 2) % 2}" if internal else None, "slices": slices,
                         # JM's first patient has modality P under the other fold: the split merges folds.
                         "split_folds": internal and i == 0})
    return plan


def _patient_dir(root: Path, p: dict[str, Any], fold: str | None) -> Path:
    base = root / p["hospital"]
    if fold is not None:
        base = base / fold
    return base / f"grade{p['grade']}" / p["patient_id"]


def _write_tree(root: Path, plan: list[dict[str, Any]], pools: dict[int, _CellPool]) -> int:
    from PIL import Image

    written = 0
    for p in plan:
        for mod in MODALITIES:
            fold = p["fold"]
            if p["split_folds"] and mod == "P":
                fold = "fold2" if fold == "fold1" else "fold1"
            mdir = _patient_dir(root, p, fold) / mod
            mdir.mkdir(parents=True, exist_ok=True)  # a missing modality keeps its (empty) folder
            for k in range(p["slices"][mod]):
                Image.fromarray(to_grey(pools[p["grade"]].draw(), mod)).save(mdir / f"slice{k + 1}.png")
                written += 1
    return written


def _check_target(root: Path, overwrite: bool) -> bool:
    """True when ``root`` exists and will be replaced; refuses non-empty folders that are not toy trees."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise UsageError(f"{root} exists and is not a folder; choose another --output-dir")
    if not any(root.iterdir()):
        return True
    if not overwrite:
        raise UsageError(f"{root} is not empty; pass --overwrite to replace the toy tree")
    if not (root / MANIFEST).is_file():
        raise UsageError(f"{root} has no {MANIFEST}, so it is not a toy tree; --overwrite only replaces toy trees")
    return True


def make_toy_patient_tree(root: Path, n_patients: int = 32, seed: int = 0, overwrite: bool = False,
                          toycells: Path | None = None) -> dict[str, Any]:
    """Write the synthetic tree under ``root`` (via a temporary folder, then rename); returns the manifest."""
    root = Path(root)
    if n_patients < MIN_PATIENTS:
        raise UsageError(f"toy_tree.patients must be >= {MIN_PATIENTS} (each JM grade needs train and val patients)")
    replace = _check_target(root, overwrite)
    rng = np.random.default_rng(seed)
    pools = _cells_by_grade(toycells, rng)
    plan = plan_patients(n_patients, seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        slices = _write_tree(tmp, plan, pools)
        incomplete = [p["patient_id"] for p in plan if min(p["slices"].values()) == 0]
        manifest = {
            "generator": "xaiclip train toy-tree", "seed": seed, "n_patients": n_patients,
            "internal_hospital": INTERNAL, "external_hospitals": list(EXTERNAL), "modalities": list(MODALITIES),
            "grades": {str(k): v for k, v in GRADE_CELLS.items()}, "image_size": 64, "slices": slices,
            "incomplete_patients": incomplete,
            "patients": [{k: v for k, v in p.items() if k != "split_folds"} for p in plan],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if replace:
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
