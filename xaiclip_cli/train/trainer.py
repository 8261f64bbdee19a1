"""The `train fit` loop: timm model/optimiser/scheduler, AMP, EMA, accumulation, best/last checkpoints, resume, DDP.

The loop is written here rather than taken from timm's train.py, which is a script (argparse, no library entry
point); it keeps timm's pieces (create_model, create_optimizer_v2, create_scheduler_v2, ModelEmaV3, freeze).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xaiclip_cli.config.base import dump_yaml, save_config
from xaiclip_cli.config.train import TrainSettings
from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.train import rundir
from xaiclip_cli.train.checkpoint import EarlyStopping, metric_value, rng_state, save_atomic, set_rng_state
from xaiclip_cli.train.data import FitData, SplitData, load_fit_data, prepare_batch
from xaiclip_cli.train.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    dist_from_env,
    gather_objects,
    init_distributed,
    shutdown,
)
from xaiclip_cli.train.losses import build_loss
from xaiclip_cli.train.metrics import classification_metrics, split_metrics
from xaiclip_cli.train.model import build_model, freeze_stages, load_checkpoint, model_meta

log = logging.getLogger("xaiclip.train")


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """auto -> cuda (cuda:LOCAL_RANK under DDP) when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("training.device is cuda but no CUDA device is available; use --device cpu")
        if info.enabled:
            name = f"cuda:{info.local_rank}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _batches(indices: list[int], batch_size: int, train: bool) -> list[list[int]]:
    out = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    # BatchNorm cannot train on a single sample: drop a trailing batch of one.
    if train and len(out) > 1 and len(out[-1]) == 1:
        out.pop()
    return out


def _loader(ds: SplitData, batches: list[list[int]], workers: int, pin: bool) -> Any:
    from xaiclip_cli.train.data import ArraySplit

    if isinstance(ds, ArraySplit) or workers == 0:
        return (ds[b] for b in batches)
    # More loader processes than cores only adds contention (and a DataLoader warning).
    workers = max(1, min(workers, os.cpu_count() or 1))
    return torch.utils.data.DataLoader(ds, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin)


class Fitter:
    """Everything one `train fit` run needs, built from the settings."""

    def __init__(self, s: TrainSettings, warn: Callable[[str], None] | None = None) -> None:
        self.s = s
        self.warn = warn or log.warning
        self.dist = dist_from_env()
        self.device = resolve_device(s.training.device, self.dist)
        init_distributed(self.dist, self.device)
        if s.training.threads:
            torch.set_num_threads(s.training.threads)
        self.data: FitData = load_fit_data(s.data.source, s.data.split_dir, s.data.modality, s.data.image_size,
                                           s.data.in_chans, s.data.size, s.data.data_root)
        self.num_classes = s.model.num_classes or self.data.num_classes
        if not self.data.multi_label and self.num_classes < self.data.num_classes:
            raise UsageError(f"model.num_classes {self.num_classes} < {self.data.num_classes} classes in the data")
        self.multi_label = self.data.multi_label
        c = s.data.in_chans
        self.mean = [float(v) for v in s.augmentation.mean] * (c if len(s.augmentation.mean) == 1 else 1)
        self.std = [float(v) for v in s.augmentation.std] * (c if len(s.augmentation.std) == 1 else 1)
        self.tag = s.data.modality if s.data.source == "splits" else s.data.source.replace("medmnist:", "")
        loss_type = "bce" if self.multi_label and s.training.loss_type == "ce" else s.training.loss_type
        self.criterion = build_loss(loss_type, self.multi_label, list(s.training.class_weights) or None,
                                    s.training.label_smoothing, s.training.focal_gamma, s.training.focal_alpha)
        self.criterion.to(self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.training.amp)

    # ----- model and optimisation -------------------------------------------------------------------------------
    def new_model(self, pretrained: str | None = None) -> tuple[nn.Module, bool]:
        """A fresh classifier with the configured weights and frozen stages, on the device."""
        s = self.s
        model, loaded = build_model(s.model.name, self.num_classes, s.data.in_chans, s.data.image_size,
                                    pretrained or s.model.pretrained, s.model.pretrained_path, self.warn,
                                    cifar_stem=s.model.cifar_stem)
        freeze_stages(model, s.model.freeze_stages)
        model.to(self.device)
        if s.training.channels_last:
            model.to(memory_format=torch.channels_last)
        return model, loaded

    def autocast(self) -> Any:
        """Autocast context for the configured AMP dtype (no-op without AMP)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def batch_input(self, images: torch.Tensor, train: bool, gen: torch.Generator | None) -> torch.Tensor:
        """uint8 batch -> normalised (augmented when training) float tensor on the device."""
        s = self.s
        x = prepare_batch(images.to(self.device, non_blocking=True), s.data.image_size, s.data.in_chans,
                          self.mean, self.std, train, s.augmentation.hflip, s.augmentation.rotation, gen,
                          s.augmentation.interpolation)
        if s.training.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax (single label) or sigmoid (multi-label) probabilities as float32."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """Labels in the dtype the criterion expects."""
        return y.to(self.device).float() if self.multi_label else y.to(self.device).long()

    # ----- evaluation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, ds: SplitData) -> tuple[np.ndarray, float]:
        """Probabilities for every sample of ``ds`` (gathered across ranks, in dataset order) and the mean loss."""
        model.eval()
        idx = list(range(self.dist.rank, len(ds), self.dist.world))
        probs, seen, loss_sum = [], [], 0.0
        for images, y, ind in _loader(ds, _batches(idx, self.s.training.batch_size, False), 0, False):
            x = self.batch_input(images, False, None)
            with self.autocast():
                logits = model(x)
            loss_sum += float(self.criterion(logits.float(), self.target(y))) * len(ind)
            probs.append(self.to_probs(logits).cpu().numpy())
            seen.append(ind.numpy())
        local = (np.concatenate(seen) if seen else np.zeros(0, int),
                 np.concatenate(probs) if probs else np.zeros((0, self.num_classes), np.float32), loss_sum)
        parts = gather_objects(local, self.dist)
        order = np.concatenate([p[0] for p in parts])
        allp = np.concatenate([p[1] for p in parts])
        out = np.zeros((len(ds), allp.shape[1] if allp.ndim == 2 else self.num_classes), np.float32)
        out[order] = allp
        return out, sum(p[2] for p in parts) / max(len(ds), 1)

    def evaluate(self, model: nn.Module, ds: SplitData) -> dict[str, float]:
        """Loss, AUC, ACC, sensitivity, specificity and patient AUC of ``model`` on ``ds``."""
        prob, loss = self.predict(model, ds)
        out = {"loss": loss}
        out.update(split_metrics(ds.labels, prob, ds.patient_ids, self.multi_label))
        return out

    # ----- the run ----------------------------------------------------------------------------------------------
    def prepare_run_dir(self) -> tuple[Path, Path | None]:
        """The run directory (rank 0 decides) and the checkpoint to resume from, if any."""
        s = self.s
        if s.experiment.resume is not None:
            run_dir, ckpt = rundir.resolve_resume(s.experiment.resume)
            return run_dir, ckpt
        name = s.experiment.name or rundir.default_run_name(
            s.model.name, self.tag or "data", s.training.learning_rate, s.training.batch_size)
        run_dir = Path(s.experiment.output_dir) / name
        problem = None
        if self.dist.is_main:
            try:
                rundir.check_fresh(run_dir)
            except UsageError as exc:
                problem = str(exc)
        # Rank 0 decides (name and freshness) before anyone creates the directory.
        run_dir, problem = broadcast_object((run_dir, problem), self.dist)
        if problem:
            raise UsageError(problem)
        return run_dir, None


def _scheduler(s: TrainSettings, optimizer: torch.optim.Optimizer) -> Any:
    if s.training.scheduler == "none":
        return None
    from timm.scheduler import create_scheduler_v2

    t = s.training
    # timm's multistep decays at index m - 1 (its historical convention); +1 gives PyTorch MultiStepLR timing, as
    # in the MedMNIST recipe: milestone 50 means epochs 51.. (1-based) run at the decayed rate.
    sched, _ = create_scheduler_v2(
        optimizer, sched=t.scheduler, num_epochs=t.epochs, decay_epochs=t.decay_epochs,
        decay_milestones=[m + 1 for m in t.decay_milestones], decay_rate=t.decay_rate, warmup_epochs=t.warmup_epochs,
        patience_epochs=t.patience_epochs, plateau_mode="max", step_on_epochs=True,
    )
    return sched


def _versions() -> dict[str, str]:
    import timm

    from xaiclip_cli import __version__

    return {"xaiclip": __version__, "torch": torch.__version__, "timm": timm.__version__}


def run_fit(
    s: TrainSettings,
    warn: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train one classifier per the settings; returns the content of results.json.

    ``stop_after`` ends the process-level run after that many epochs (as if killed), leaving a resumable run dir.
    """
    f = Fitter(s, warn)
    try:
        return _run(f, on_epoch, stop_after)
    finally:
        shutdown(f.dist)


def _run(f: Fitter, on_epoch: Callable[[dict[str, Any]], None] | None, stop_after: int | None) -> dict[str, Any]:
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3

    s, dist, main = f.s, f.dist, f.dist.is_main
    run_dir, resume_ckpt = f.prepare_run_dir()
    ckpt_dir = run_dir / "checkpoints"
    seed_everything(s.experiment.seed + dist.rank)
    train_log = board = None
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume_ckpt is None:
            save_config(s, run_dir)
        train_log = rundir.TrainLog(run_dir / "train.log")
        board = rundir.Board(run_dir / "tensorboard", s.experiment.report_to == "tensorboard")
    barrier(dist)
    try:
        model, pretrained_loaded = f.new_model()
        meta = model_meta(s.model.name, f.num_classes, s.data.in_chans, s.data.image_size, f.mean, f.std,
                          f.data.class_names, f.multi_label, s.model.freeze_stages, pretrained_loaded,
                          s.model.cifar_stem, s.augmentation.interpolation)
        train_model: nn.Module = model
        if dist.enabled:
            if s.training.sync_bn and f.device.type != "cuda":
                f.warn("--sync-bn needs CUDA (torch SyncBatchNorm); ignored on CPU")
            elif s.training.sync_bn:
                train_model = nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
            ids = [f.device.index] if f.device.type == "cuda" else None
            train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=ids)
        t = s.training
        optimizer = create_optimizer_v2(model, opt=t.optimizer, lr=t.learning_rate, weight_decay=t.weight_decay,
                                        momentum=t.momentum)
        scheduler = _scheduler(s, optimizer)
        scaler = torch.amp.GradScaler(f.device.type) if s.training.amp == "fp16" else None
        ema = ModelEmaV3(model, decay=t.model_ema_decay, device=f.device) if t.model_ema else None
        stopper = EarlyStopping(t.early_stop_patience, t.early_stop_min_delta, t.early_stop_enabled)
        start_epoch, step = 0, 0
        best_value: float | None = None
        best_epoch = 0
        history: list[dict[str, Any]] = []
        if resume_ckpt is not None:
            ck = load_checkpoint(resume_ckpt)
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            if scheduler is not None and ck.get("scheduler") is not None:
                scheduler.load_state_dict(ck["scheduler"])
            if scaler is not None and ck.get("scaler") is not None:
                scaler.load_state_dict(ck["scaler"])
            if ema is not None and ck.get("ema") is not None:
                ema.load_state_dict(ck["ema"])
            stopper.load_state_dict(ck["early_stop"])
            start_epoch, step = int(ck["epoch"]), int(ck["step"])
            best_value, best_epoch = ck["best_value"], int(ck["best_epoch"])
            meta["pretrained_loaded"] = pretrained_loaded = bool(ck["meta"].get("pretrained_loaded", False))
            if dist.rank == 0:
                set_rng_state(ck["rng"])
            history = [r for r in rundir.read_rows(run_dir / "metrics.csv") if int(r["epoch"]) <= start_epoch]
            log.info("resumed %s at epoch %d (best %s at epoch %d)", run_dir, start_epoch, best_value, best_epoch)
            if ck.get("finished"):
                log.info("run %s already finished; re-evaluating best.pt", run_dir)
        select = t.select_metric
        train_ds, val_ds = f.data.splits["train"], f.data.splits["val"]
        stopped_early = bool(resume_ckpt is not None and stopper.enabled and stopper.bad_epochs >= stopper.patience)
        epoch = start_epoch
        while epoch < t.epochs and not stopped_early:
            t0 = time.time()
            lr = optimizer.param_groups[0]["lr"]
            train_stats, step = _train_epoch(f, train_model, model, optimizer, scaler, ema, train_ds, epoch, step,
                                             board)
            val = f.evaluate(model, val_ds)
            epoch += 1
            row: dict[str, Any] = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train_stats.items()},
                                   **{f"val_{k}": v for k, v in val.items()}}
            if ema is not None:
                row.update({f"val_ema_{k}": v for k, v in f.evaluate(ema.module, val_ds).items()})
            row["seconds"] = round(time.time() - t0, 3)
            value = metric_value(row[select])
            if scheduler is not None:
                scheduler.step(epoch, value if math.isfinite(value) else 0.0)
            improved = best_value is None or value > best_value
            if improved:
                best_value, best_epoch = value, epoch
            stopped_early = stopper.step(row[select])
            history.append(row)
            state = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ema": ema.state_dict() if ema is not None else None,
                "epoch": epoch, "step": step, "best_value": best_value, "best_epoch": best_epoch,
                "early_stop": stopper.state_dict(), "rng": rng_state(), "meta": meta,
                "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float))},
            }
            if main:
                rundir.write_rows(run_dir / "metrics.csv", history)
                if improved:
                    # torch.save serialises the tensors now: best.pt is a copy, never a live reference.
                    save_atomic(state, ckpt_dir / "best.pt")
                if not s.experiment.save_best_only and s.experiment.checkpoint_hist > 0:
                    save_atomic(state, ckpt_dir / f"checkpoint-{epoch}.pt")
                    old = ckpt_dir / f"checkpoint-{epoch - s.experiment.checkpoint_hist}.pt"
                    old.unlink(missing_ok=True)
                save_atomic(state, ckpt_dir / "last.pt")
                assert board is not None
                board.scalars({"train/lr": lr, **{f"val/{k}": v for k, v in val.items()},
                               **{f"val_ema/{k[8:]}": v for k, v in row.items() if k.startswith("val_ema_")}}, epoch)
                log.info("epoch %d/%d lr %.3g train_loss %.4f val_loss %.4f val_auc %.4f%s", epoch, t.epochs, lr,
                         row["train_loss"], row["val_loss"], row["val_auc"], " *" if improved else "")
            barrier(dist)
            if on_epoch is not None:
                on_epoch(row)
            if stop_after is not None and epoch - start_epoch >= stop_after and epoch < t.epochs:
                return {"run_dir": str(run_dir), "interrupted_at_epoch": epoch}
        if stopped_early:
            log.info("early stop at epoch %d (no %s improvement for %d epochs)", epoch, select, t.early_stop_patience)
        result = _finish(f, run_dir, best_epoch, best_value, history, stopped_early, epoch, pretrained_loaded)
        return result
    finally:
        if train_log is not None:
            train_log.close()
        if board is not None:
            board.close()


def _train_epoch(f: Fitter, train_model: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: Any, ema: Any, ds: SplitData, epoch: int, step: int,
                 board: rundir.Board | None) -> tuple[dict[str, float], int]:
    """One pass over the training split; returns (loss/AUC/ACC of the epoch, global optimiser step)."""
    s, t, dist = f.s, f.s.training, f.dist
    # Order and augmentation depend only on (seed, epoch, rank), so a resumed run sees the same batches.
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                                  seed=s.experiment.seed, drop_last=False)
    sampler.set_epoch(epoch)
    batches = _batches(list(sampler), t.batch_size, True)
    gen = torch.Generator().manual_seed(s.experiment.seed * 1_000_003 + epoch * 1009 + dist.rank)
    train_model.train()
    accum = t.grad_accum_steps
    loss_sum, n_seen, probs, labels = 0.0, 0, [], []
    optimizer.zero_grad(set_to_none=True)
    loader = _loader(ds, batches, s.data.num_workers, f.device.type == "cuda")
    for i, (images, y, _ind) in enumerate(loader):
        x = f.batch_input(images, True, gen)
        target = f.target(y)
        with f.autocast():
            logits = train_model(x)
        loss = f.criterion(logits.float(), target)
        if not torch.isfinite(loss):
            raise XaiclipError(f"loss is {float(loss)} at epoch {epoch + 1}; lower --learning-rate or disable --amp")
        last = (i + 1) % accum == 0 or i == len(batches) - 1
        sync = contextlib.nullcontext() if (last or not dist.enabled) else train_model.no_sync()
        with sync:
            scaled = loss / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if last:
            if t.clip_grad is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            if board is not None and step % s.experiment.log_interval == 0:
                board.scalars({"train/loss": float(loss.detach()), "train/lr": optimizer.param_groups[0]["lr"]}, step)
        loss_sum += float(loss.detach()) * len(y)
        n_seen += len(y)
        probs.append(f.to_probs(logits.detach()).cpu().numpy())
        labels.append(y.numpy())
    parts = gather_objects((loss_sum, n_seen, probs, labels), dist)
    total = sum(p[1] for p in parts)
    allp = [a for p in parts for a in p[2]]
    ally = [a for p in parts for a in p[3]]
    stats = {"loss": sum(p[0] for p in parts) / max(total, 1)}
    if allp:
        m = classification_metrics(np.concatenate(ally), np.concatenate(allp), f.multi_label)
        stats.update({"auc": m["auc"], "acc": m["acc"]})
    return stats, step


def _finish(f: Fitter, run_dir: Path, best_epoch: int, best_value: float | None, history: list[dict[str, Any]],
            stopped_early: bool, epochs_run: int, pretrained_loaded: bool) -> dict[str, Any]:
    """Reload best.pt, recheck val, evaluate the test split once, write test_metrics.csv and results.json."""
    s, main = f.s, f.dist.is_main
    barrier(f.dist)
    best_path = run_dir / "checkpoints" / "best.pt"
    ck = load_checkpoint(best_path)
    model, _ = f.new_model(pretrained="false")
    model.load_state_dict(ck["model"])
    if int(ck["epoch"]) != best_epoch:
        raise XaiclipError(f"{best_path} holds epoch {ck['epoch']} but the best epoch is {best_epoch}")
    val = f.evaluate(model, f.data.splits["val"])
    recheck = metric_value(val[s.training.select_metric.removeprefix("val_")])
    recorded = best_value if best_value is not None else -math.inf
    if not (recheck == recorded or abs(recheck - recorded) <= 1e-6):
        raise XaiclipError(f"{best_path} gives {s.training.select_metric} {recheck} but {recorded} was recorded")
    test_rows: list[dict[str, Any]] = []
    test_overall: dict[str, float] = {}
    test_ds = f.data.splits.get("test")
    if test_ds is not None and len(test_ds):
        prob, loss = f.predict(model, test_ds)
        test_overall = {"loss": loss, **split_metrics(test_ds.labels, prob, test_ds.patient_ids, f.multi_label)}
        hospitals = sorted(set(test_ds.hospitals))
        groups = [(h, [i for i, x in enumerate(test_ds.hospitals) if x == h]) for h in hospitals]
        groups.append(("overall", list(range(len(test_ds)))))
        for name, idx in groups:
            m = split_metrics(test_ds.labels[idx], prob[idx], [test_ds.patient_ids[i] for i in idx], f.multi_label)
            test_rows.append({"hospital": name, "n_slices": len(idx),
                              "n_patients": len({test_ds.patient_ids[i] for i in idx}), **m})
    counts = {k: len(v) for k, v in f.data.splits.items()}
    result = {
        "run_dir": str(run_dir), "best_epoch": best_epoch, "select_metric": s.training.select_metric,
        "best_val": None if best_value is None or not math.isfinite(best_value) else best_value,
        "best_val_metrics": {k: v for k, v in val.items()},
        "test_metrics": test_overall, "epochs_run": epochs_run, "stopped_early": stopped_early,
        "pretrained_loaded": pretrained_loaded, "counts": counts, "num_classes": f.num_classes,
        "class_names": f.data.class_names, "data": f.data.description, "protocol": s.experiment.protocol,
        "versions": _versions(),
    }
    if main:
        if test_rows:
            rundir.write_rows(run_dir / "test_metrics.csv", test_rows)
        board = rundir.Board(run_dir / "tensorboard", s.experiment.report_to == "tensorboard")
        board.scalars({f"test/{k}": v for k, v in test_overall.items()}, best_epoch)
        board.close()
        tmp = run_dir / ".results.json.tmp"
        tmp.write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
        tmp.replace(run_dir / "results.json")
        last = run_dir / "checkpoints" / "last.pt"
        if last.is_file():
            ck_last = load_checkpoint(last)
            ck_last["finished"] = True
            save_atomic(ck_last, last)
        if s.experiment.best_hparams_dir and result["best_val"] is not None:
            hp = s.model_copy(deep=True)
            hp.experiment.resume = None
            hp.experiment.name = None
            written = rundir.update_best_hparams(Path(s.experiment.best_hparams_dir), s.model.name, f.tag or "data",
                                                 dump_yaml(hp), float(result["best_val"]), run_dir)
            if written is not None:
                result["best_hparams"] = str(written)
    barrier(f.dist)
    return result
