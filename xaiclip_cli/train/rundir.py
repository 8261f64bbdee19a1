"""The run directory of `train fit`: naming, the reuse rule, metrics CSVs, train.log, TensorBoard, best-hparams YAML."""

from __future__ import annotations

import csv
import datetime as _dt
import logging
import math
from pathlib import Path
from typing import Any

import yaml

from xaiclip_cli.errors import UsageError

log = logging.getLogger("xaiclip.train")


def default_run_name(model: str, tag: str, lr: float, batch_size: int, now: _dt.datetime | None = None) -> str:
    """``<YYYYmmdd-HHMMSS>-<model>-<modality>-lr<lr>-b<bs>``."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    safe_tag = tag.replace(":", "-").replace("/", "-")
    return f"{stamp}-{model}-{safe_tag}-lr{lr:g}-b{batch_size}"


def resolve_resume(path: Path) -> tuple[Path, Path]:
    """(run dir, checkpoint) for ``--resume`` given a run directory or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        ckpt = p / "checkpoints" / "last.pt"
        run = p
    else:
        ckpt = p
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    if not ckpt.is_file():
        raise UsageError(f"--resume: checkpoint {ckpt} not found")
    return run, ckpt


def check_fresh(run_dir: Path) -> None:
    """Refuse to train into a non-empty run directory (exit 2)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"run directory {run_dir} is not empty; pass --resume {run_dir} or choose another --name")


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write dict rows as CSV (union of keys as header) atomically."""
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    tmp.replace(path)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """CSV rows with numbers parsed (empty cells become NaN)."""
    if not path.is_file():
        return []
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for k, v in r.items():
                try:
                    row[k] = float(v) if v != "" else math.nan
                    if k == "epoch":
                        row[k] = int(row[k])
                except ValueError:
                    row[k] = v
            out.append(row)
    return out


class TrainLog:
    """train.log file handler on the xaiclip logger (rank 0), removed on close."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.logger = logging.getLogger("xaiclip")
        self.logger.addHandler(self.handler)
        self.prev_level = self.logger.level
        self.raised: list[tuple[logging.Handler, int]] = []
        effective = self.logger.getEffectiveLevel()
        if effective > logging.INFO:
            self.logger.setLevel(logging.INFO)
            # INFO must reach train.log, but the console handlers keep the level asked for (--quiet: warnings).
            self.raised = [(h, h.level) for h in logging.getLogger().handlers if h.level < effective]
            for h, _ in self.raised:
                h.setLevel(effective)

    def close(self) -> None:
        """Detach and close the file; restore the logger and console levels."""
        self.logger.removeHandler(self.handler)
        self.handler.close()
        self.logger.setLevel(self.prev_level)
        for h, level in self.raised:
            h.setLevel(level)


class Board:
    """TensorBoard writer when tensorboard is importable and wanted; otherwise every call is a no-op."""

    def __init__(self, directory: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed; skipping TensorBoard logs")
            return
        self.writer = SummaryWriter(str(directory))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log several scalars at one step (NaN skipped)."""
        if self.writer is None:
            return
        for k, v in values.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close."""
        if self.writer is not None:
            self.writer.close()


def update_best_hparams(
    directory: Path, model: str, tag: str, config_yaml: str, val_auc: float, run_dir: Path
) -> Path | None:
    """Rewrite ``<model>_<tag>.yaml`` when this run's best val AUC beats the stored one; returns the path if written."""
    if math.isnan(val_auc):
        return None
    directory = Path(directory)
    target = directory / f"{model}_{tag.replace(':', '-').replace('/', '-')}.yaml"
    if target.is_file():
        try:
            old = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
            old_auc = float((old.get("provenance") or {}).get("val_auc", -math.inf))
        except (yaml.YAMLError, TypeError, ValueError):
            old_auc = -math.inf
        if not val_auc > old_auc:
            return None
    data = yaml.safe_load(config_yaml)
    data["provenance"] = {"val_auc": float(val_auc), "run_dir": str(run_dir),
                          "date": _dt.datetime.now().isoformat(timespec="seconds")}
    directory.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(target)
    return target
