"""The `xaiclip train` command group: toy-tree, split, fit, extract, fuse, show, pipeline (and clip)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel

from xaiclip_cli.cli.app import group_app
from xaiclip_cli.cli.command import settings_command
from xaiclip_cli.cli.output import RunContext
from xaiclip_cli.config.train import TrainSettings
from xaiclip_cli.errors import UsageError

app = group_app("Patient-level splits, classifier fine-tuning, per-patient features, fusion and CLIP training.")

_DATA_FIT = ["data.source", "data.split_dir", "data.modality", "data.size", "data.data_root", "data.image_size",
             "data.in_chans", "data.num_workers"]
_MODEL_FIT = ["model.name", "model.pretrained", "model.pretrained_path", "model.num_classes", "model.freeze_stages",
              "model.cifar_stem"]
_TRAINING = [f"training.{k}" for k in TrainSettings.model_fields["training"].annotation.model_fields]  # type: ignore[union-attr]
_AUG = [f"augmentation.{k}" for k in TrainSettings.model_fields["augmentation"].annotation.model_fields]  # type: ignore[union-attr]
_EXPERIMENT_FIT = ["experiment.name", "experiment.seed", "experiment.output_dir", "experiment.save_best_only",
                   "experiment.checkpoint_hist", "experiment.log_interval", "experiment.resume",
                   "experiment.report_to", "experiment.best_hparams_dir", "experiment.protocol", "experiment.repeats"]
_SPLIT = ["data.root_dir", "data.modalities", "data.internal_hospital", "data.train_ratio", "experiment.seed"]


class SplitResult(BaseModel):
    """Patient-level split"""

    output_dir: str
    dropped_patients: int
    splits: list[dict[str, Any]]


class FitResult(BaseModel):
    """Classifier training"""

    run_dir: str
    best_epoch: Optional[int]
    select_metric: str
    best_val: Optional[float]
    epochs_run: int
    stopped_early: bool
    pretrained_loaded: bool
    protocol: str = "none"
    test: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    best_hparams: Optional[str] = None


class ExtractResult(BaseModel):
    """Per-patient features"""

    modality: Optional[str]
    arch: Optional[str]
    feature_dim: int
    output_dir: str
    splits: list[dict[str, Any]]
    aligned: list[dict[str, Any]] = []


class FuseResult(BaseModel):
    """Late fusion"""

    C: float
    feature_dim: int
    output_dir: str
    metrics: list[dict[str, Any]]
    c_grid: list[dict[str, Any]] = []


class ShowResult(BaseModel):
    """Training run"""

    run_dir: str
    best_epoch: Optional[int]
    best_val: Optional[float]
    epochs: list[dict[str, Any]]
    test: list[dict[str, Any]] = []
    plots: list[str] = []


class ToyTreeResult(BaseModel):
    """Synthetic patient tree"""

    output_dir: str
    patients: int
    slices: int
    incomplete_patients: list[str]
    hospitals: list[dict[str, Any]]


class PipelineResult(BaseModel):
    """Split, fit, extract, fuse"""

    steps: list[dict[str, Any]]
    fusion: list[dict[str, Any]] = []


def _do_split(s: TrainSettings, output_dir: Path) -> SplitResult:
    import logging

    from xaiclip_cli.train.split import make_split

    if s.data.root_dir is None:
        raise UsageError("train split needs --root-dir (the patient tree)")
    log_dir = s.split.log_dir or output_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_dir / "split.log", encoding="utf-8")
    logging.getLogger("xaiclip").addHandler(handler)
    try:
        summary = make_split(s.data.root_dir, list(s.data.modalities), s.data.internal_hospital, s.data.train_ratio,
                             s.experiment.seed, output_dir, s.experiment.overwrite)
    finally:
        logging.getLogger("xaiclip").removeHandler(handler)
        handler.close()
    rows = [{"split": k, "patients": v["patients"], "slices": v["slices"]} for k, v in summary["splits"].items()]
    return SplitResult(output_dir=str(output_dir), dropped_patients=len(summary["dropped"]), splits=rows)


@settings_command(app, TrainSettings, fields=[*_SPLIT, "split.output_dir", "split.log_dir", "experiment.overwrite",
                                              "log_level"])
def split(s: TrainSettings, ctx: RunContext) -> SplitResult:
    """Split the patient tree by patient (stratified train/val inside the internal hospital, others = test).

    Reads <root>/<hospital>/[fold*/]grade<k>/<patient>/<modality>/*.png, keeps patients with slices in every
    modality, writes {train,val,test}_{modality}.csv and split_summary.json, and checks that no patient leaks.
    """
    return _do_split(s, s.split.output_dir)


def _fit_result(res: dict[str, Any]) -> FitResult:
    test = [{"split": "test", **res["test_metrics"]}] if res.get("test_metrics") else []
    return FitResult(run_dir=res["run_dir"], best_epoch=res["best_epoch"], select_metric=res["select_metric"],
                     best_val=res["best_val"], epochs_run=res["epochs_run"], stopped_early=res["stopped_early"],
                     pretrained_loaded=res["pretrained_loaded"], protocol=res.get("protocol", "none"), test=test,
                     best_hparams=res.get("best_hparams"))


def _repeats_result(rep: dict[str, Any]) -> FitResult:
    import math

    runs, mean = rep["results"], rep["rows"][-2]
    clean = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rep["rows"]]
    test = [{"split": "test (mean)", **{k[5:]: v for k, v in clean[-2].items() if k.startswith("test_")}}]
    best_val = None if math.isnan(mean["best_val"]) else mean["best_val"]
    return FitResult(run_dir=rep["run_dir"], best_epoch=None, select_metric=runs[0]["select_metric"],
                     best_val=best_val, epochs_run=sum(int(r["epochs_run"]) for r in runs),
                     stopped_early=any(r["stopped_early"] for r in runs),
                     pretrained_loaded=any(r["pretrained_loaded"] for r in runs),
                     protocol=runs[0].get("protocol", "none"), test=test, repeats=clean)


_FIT = [*_DATA_FIT, *_MODEL_FIT, *_TRAINING, *_AUG, *_EXPERIMENT_FIT, "log_level"]


@settings_command(app, TrainSettings, fields=_FIT)
def fit(s: TrainSettings, ctx: RunContext) -> FitResult:
    """Train one timm classifier (split CSVs per modality, or --data medmnist:<flag>, toycells, folder:, csv:).

    Writes runs/<name>/ with config.yaml, train.log, metrics.csv, checkpoints/{last,best}.pt, test_metrics.csv and
    results.json. best.pt is the epoch with the best validation metric; the test split is evaluated once on it.
    A non-empty run directory is refused unless --resume RUN_DIR continues it. Under torchrun, one process per GPU.
    --protocol medmnist applies the MedMNIST v2 recipe to settings not given; --repeats N trains N seeds into
    runs/<name>/rep<k> and reports their mean (repeats.csv).
    """
    import logging

    from xaiclip_cli.train.distributed import dist_from_env
    from xaiclip_cli.train.protocol import apply_protocol, run_repeats
    from xaiclip_cli.train.trainer import run_fit

    s, kept = apply_protocol(s)
    if kept:
        logging.getLogger("xaiclip.train").info("--protocol %s: keeping your %s", s.experiment.protocol,
                                                ", ".join(kept))
    main = dist_from_env().is_main
    total = s.training.epochs * s.experiment.repeats
    with ctx.progress(total if main else 0, "fit", unit="epochs") as advance:
        if s.experiment.repeats > 1:
            rep = run_repeats(s, run_fit, ctx.warn, lambda row: advance(1), write=main)
            return _repeats_result(rep) if main else None
        res = run_fit(s, warn=ctx.warn, on_epoch=lambda row: advance(1))
    # Under torchrun every rank runs this command; only rank 0 reports.
    return _fit_result(res) if main else None


def _extract(s: TrainSettings, ctx: RunContext) -> ExtractResult:
    import torch

    from xaiclip_cli.train.distributed import DistInfo
    from xaiclip_cli.train.extract import align_modalities, extract_features
    from xaiclip_cli.train.trainer import resolve_device

    if s.training.threads:
        torch.set_num_threads(s.training.threads)
    result = ExtractResult(modality=s.data.modality, arch=None, feature_dim=0, output_dir=str(s.extract.output_dir),
                           splits=[])
    if s.data.modality:
        ckpt = s.model.checkpoint
        if ckpt is None:
            if s.extract.run is None:
                raise UsageError("train extract needs --run RUN_DIR or --checkpoint FILE")
            ckpt = s.extract.run / "checkpoints" / "best.pt"
        expected = s.model.name if "name" in s.model.model_fields_set else None
        with ctx.progress(None, f"extract {s.data.modality}", unit="patients") as advance:
            res = extract_features(ckpt, s.data.modality, s.data.split_dir, s.extract.output_dir,
                                   s.training.batch_size, resolve_device(s.training.device, DistInfo()),
                                   expected, s.experiment.overwrite, advance)
        result.arch, result.feature_dim = res["arch"], res["feature_dim"]
        result.splits = [{"split": k, **v} for k, v in res["counts"].items()]
    elif not s.extract.align:
        raise UsageError("train extract needs --modality (or --align alone to join extracted modalities)")
    if s.extract.align:
        al = align_modalities(s.extract.output_dir, list(s.data.modalities))
        result.aligned = [{"split": k, **v} for k, v in al.items()]
    return result


@settings_command(app, TrainSettings, fields=["extract.run", "model.checkpoint", "model.name", "data.modality",
                                              "data.modalities", "data.split_dir", "extract.output_dir",
                                              "training.batch_size", "training.device", "training.threads",
                                              "extract.align", "experiment.overwrite", "log_level"])
def extract(s: TrainSettings, ctx: RunContext) -> ExtractResult:
    """Save per-patient pooled pre-logit features of a trained classifier (one .npy per patient) and info CSVs.

    The model is rebuilt from the checkpoint (--run RUN_DIR uses its best.pt). --align joins the modalities of
    each split on patient_id into aligned/aligned.csv and lists the others in dropped.csv.
    """
    return _extract(s, ctx)


def _fuse(s: TrainSettings) -> FuseResult:
    from xaiclip_cli.config.base import save_config
    from xaiclip_cli.train.fuse import fuse as run_fuse

    f = s.fuse
    res = run_fuse(f.feature_dir, list(s.data.modalities), f.output_dir, f.c, list(f.c_grid) or None, f.max_iter,
                   f.random_state, f.standardize, f.use_aligned, s.experiment.overwrite)
    save_config(s, f.output_dir)
    return FuseResult(**res)


@settings_command(app, TrainSettings, fields=["data.modalities", "fuse.feature_dir", "fuse.output_dir",
                                              "fuse.use_aligned", "fuse.standardize", "fuse.c", "fuse.c_grid",
                                              "fuse.max_iter", "fuse.random_state", "experiment.overwrite",
                                              "log_level"])
def fuse(s: TrainSettings, ctx: RunContext) -> FuseResult:
    """Fuse modalities: mean-pool each patient's slices, concatenate, standardise on train, L2 logistic regression.

    Writes fusion_metrics.csv (AUC, ACC, sensitivity, specificity per split), predictions.csv, model.joblib and
    config.yaml. --c-grid picks C by validation AUC.
    """
    return _fuse(s)


@settings_command(app, TrainSettings, fields=["show.plots", "log_level"], arguments=["show.run_dir"])
def show(s: TrainSettings, ctx: RunContext) -> ShowResult:
    """Summarise a training run: per-epoch metrics, best epoch, test metrics; writes curve PNGs (curves.png)."""
    from xaiclip_cli.train.show import summarize_run

    if s.show.run_dir is None:
        raise UsageError("train show needs RUN (a run directory)")
    return ShowResult(**summarize_run(s.show.run_dir, s.show.plots))


@settings_command(app, TrainSettings, fields=["toy_tree.output_dir", "toy_tree.patients", "toy_tree.seed",
                                              "experiment.overwrite", "log_level"])
def toy_tree(s: TrainSettings, ctx: RunContext) -> ToyTreeResult:
    """Write a small synthetic patient tree (hospitals JM, EXT1, EXT2; modalities A, P; two grades) to try on.

    Slices are 64x64 grey PNGs made from the shipped toy cells (grade0 = lymphocytes, grade1 = neutrophils), the
    same seed gives the same files, and a few patients lack a modality so that `train split` drops them.
    """
    from collections import Counter

    from xaiclip_cli.train.toy_tree import make_toy_patient_tree

    t = s.toy_tree
    m = make_toy_patient_tree(t.output_dir, t.patients, t.seed, s.experiment.overwrite)
    per = Counter((p["hospital"], p["grade"]) for p in m["patients"])
    rows = [{"hospital": h, "grade0": per[(h, 0)], "grade1": per[(h, 1)]}
            for h in [m["internal_hospital"], *m["external_hospitals"]]]
    return ToyTreeResult(output_dir=str(t.output_dir), patients=len(m["patients"]), slices=m["slices"],
                         incomplete_patients=m["incomplete_patients"], hospitals=rows)


_PIPELINE = [*_SPLIT, *_DATA_FIT[:1], "data.split_dir", *_DATA_FIT[4:], *_MODEL_FIT, *_TRAINING, *_AUG,
             "experiment.name", "experiment.output_dir", "experiment.save_best_only", "experiment.log_interval",
             "experiment.report_to", "experiment.best_hparams_dir", "fuse.c", "fuse.c_grid", "fuse.standardize",
             "log_level"]


@settings_command(app, TrainSettings, fields=_PIPELINE)
def pipeline(s: TrainSettings, ctx: RunContext) -> PipelineResult:
    """Run split -> fit per modality -> extract (+align) -> fuse from one config, skipping steps already done.

    Runs go to <output-dir>/<name>-<modality> (name: pipeline). Unless set (--split-dir, --set
    extract.output_dir=..., --set fuse.output_dir=...), splits, features and the fusion go to <output-dir>/splits,
    <output-dir>/features and <output-dir>/fusion.
    """
    from xaiclip_cli.train.trainer import run_fit

    s = s.model_copy(deep=True)
    out = s.experiment.output_dir
    # One --output-dir holds the whole workflow unless a step's folder was chosen explicitly.
    if "split_dir" not in s.data.model_fields_set:
        s.data.split_dir = out / "splits"
    if "output_dir" not in s.extract.model_fields_set:
        s.extract.output_dir = out / "features"
    if "output_dir" not in s.fuse.model_fields_set:
        s.fuse.output_dir = out / "fusion"
    steps: list[dict[str, Any]] = []
    split_dir = s.data.split_dir
    if (split_dir / "split_summary.json").is_file():
        steps.append({"step": "split", "status": "skipped (split_summary.json exists)"})
    else:
        _do_split(s, split_dir)
        steps.append({"step": "split", "status": "done", "output": str(split_dir)})
    base = s.experiment.name or "pipeline"
    for mod in s.data.modalities:
        run_dir = s.experiment.output_dir / f"{base}-{mod}"
        fs = s.model_copy(deep=True)
        fs.data.source, fs.data.modality, fs.experiment.name = "splits", mod, f"{base}-{mod}"
        if (run_dir / "results.json").is_file():
            steps.append({"step": f"fit {mod}", "status": "skipped (results.json exists)"})
        else:
            if (run_dir / "checkpoints" / "last.pt").is_file():
                fs.experiment.resume = run_dir
            res = run_fit(fs, warn=ctx.warn)
            steps.append({"step": f"fit {mod}", "status": "done", "output": res["run_dir"]})
        feats = s.extract.output_dir / "train" / f"features_{mod}.csv"
        if feats.is_file():
            steps.append({"step": f"extract {mod}", "status": "skipped (features exist)"})
        else:
            fs.extract.run, fs.extract.align, fs.experiment.overwrite = run_dir, False, True
            _extract(fs, ctx)
            steps.append({"step": f"extract {mod}", "status": "done", "output": str(s.extract.output_dir)})
    from xaiclip_cli.train.extract import align_modalities

    align_modalities(s.extract.output_dir, list(s.data.modalities))
    steps.append({"step": "align", "status": "done"})
    fz = s.model_copy(deep=True)
    fz.fuse.feature_dir, fz.experiment.overwrite = s.extract.output_dir, True
    fused = _fuse(fz)
    steps.append({"step": "fuse", "status": "done", "output": fused.output_dir})
    return PipelineResult(steps=steps, fusion=fused.metrics)


from xaiclip_cli.cli.train_clip import register as _register_clip  # noqa: E402

_register_clip(app)
