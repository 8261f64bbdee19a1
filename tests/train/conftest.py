"""Fixtures for the train tests: a synthetic patient tree of tiny grey PNGs and split CSVs made from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _slice(rng: np.random.Generator, label: int, size: int = 16) -> np.ndarray:
    img = rng.integers(0, 60, (size, size)).astype(np.uint8)
    if label == 1:  # class 1: a bright square, so a tiny CNN can learn the task in a few epochs
        img[4:12, 4:12] = 220
    return img


def make_tree(root: Path, n_internal: int = 8, n_external: int = 3, slices: int = 3, seed: int = 0,
              drop_p_for: tuple[str, ...] = ("JM_g0_p7",)) -> Path:
    """<root>/JM/fold{1,2}/grade{0,1}/<pid>/{A,P,T1}/*.png and <root>/EX/grade{0,1}/<pid>/{A,P}/*.png."""
    rng = np.random.default_rng(seed)
    for hospital, n, folded in (("JM", n_internal, True), ("EX", n_external, False)):
        for grade in (0, 1):
            for i in range(n):
                pid = f"{hospital}_g{grade}_p{i}"
                base = root / hospital
                if folded:
                    base = base / f"fold{1 + i % 2}"
                pdir = base / f"grade{grade}" / pid
                for mod in ("A", "P", "T1"):
                    if mod == "P" and pid in drop_p_for:
                        continue
                    (pdir / mod).mkdir(parents=True, exist_ok=True)
                    for k in range(slices):
                        Image.fromarray(_slice(rng, grade)).save(pdir / mod / f"slice{k + 1}.png")
    return root


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only synthetic patient tree shared by the session."""
    return make_tree(tmp_path_factory.mktemp("tree") / "data")


@pytest.fixture(scope="session")
def splits(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Split CSVs of ``tree`` (seed 42, train ratio 0.7)."""
    from xaiclip_cli.train.split import make_split

    out = tmp_path_factory.mktemp("splits")
    make_split(tree, ["A", "P"], "JM", 0.7, 42, out)
    return out


@pytest.fixture(scope="session")
def alias_splits(splits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The split CSVs with every other validation patient's label flipped: val AUC peaks early, then falls."""
    import shutil

    from xaiclip_cli.train.split import SPLIT_COLUMNS, read_split_csv, write_csv

    out = tmp_path_factory.mktemp("alias_splits")
    for f in splits.glob("*.csv"):
        shutil.copy(f, out / f.name)
    rows = read_split_csv(out / "val_A.csv")
    pids = sorted({r["patient_id"] for r in rows})
    for r in rows:
        if pids.index(r["patient_id"]) % 2 == 0:
            r["label"] = 1 - r["label"]
    write_csv(out / "val_A.csv", rows, SPLIT_COLUMNS)
    return out


def fit_settings(split_dir: Path, out: Path, **sections: dict) -> object:
    """TrainSettings for a tiny CPU fit (test_resnet at 32 px, no TensorBoard, no best-hparams file)."""
    from xaiclip_cli.config.train import TrainSettings

    base = {
        "data": {"split_dir": split_dir, "modality": "A", "image_size": 32, "num_workers": 0},
        "model": {"name": "test_resnet", "pretrained": "false"},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "device": "cpu", "threads": 1},
        "experiment": {"output_dir": out, "name": "run", "best_hparams_dir": None, "report_to": "none"},
    }
    for key, values in sections.items():
        base.setdefault(key, {}).update(values)
    return TrainSettings(**base)
